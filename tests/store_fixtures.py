"""Fixtures of the store contract suites, loaded by `pytest_plugins`: every
case runs on each store (`backend`, `store`: memory, SQLite on a real file,
PostgreSQL on a real server from `tests.pg`); `durable` cases on the SQL
stores only; `pg_backend` on PostgreSQL only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.memory import MemorySessionStore
from pilothouse.runtime.store.postgres import PostgresSessionStore
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.pg import PgServer, pg_server  # noqa: F401  (the fixture)
from tests.stores import Backend

BACKENDS = ["memory", "sqlite", "postgres"]


def _pg(request: pytest.FixtureRequest, kind: str) -> PgServer | None:
    return request.getfixturevalue("pg_server") if kind == "postgres" else None


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, PgServer | None]:
    return request.param, _pg(request, request.param)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_kind(request: pytest.FixtureRequest) -> tuple[str, PgServer | None]:
    return request.param, _pg(request, request.param)


async def _backend(kind: str, server: PgServer | None, tmp_path: Path) -> Backend:
    if kind == "memory":
        shared = MemorySessionStore()
        return Backend(kind, lambda: shared)
    if kind == "sqlite":
        path = tmp_path / "sessions.db"
        return Backend(kind, lambda: SqliteSessionStore(path), path=path)
    assert server is not None
    dsn = await server.new_database()
    return Backend(kind, lambda: PostgresSessionStore(dsn, max_size=4), dsn=dsn)


@pytest_asyncio.fixture(loop_scope="session")
async def backend(backend_kind, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every store: memory, SQLite, PostgreSQL."""
    b = await _backend(*backend_kind, tmp_path)
    yield b
    for store in b.opened:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def durable(durable_kind, tmp_path: Path) -> AsyncIterator[Backend]:
    """The durable stores: SQLite, PostgreSQL."""
    b = await _backend(*durable_kind, tmp_path)
    yield b
    for store in b.opened:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def store(backend: Backend) -> SessionStore:
    return await backend.open()


@pytest_asyncio.fixture(loop_scope="session")
async def pg_backend(pg_server: PgServer) -> AsyncIterator[Backend]:  # noqa: F811
    dsn = await pg_server.new_database()
    b = Backend("postgres", lambda: PostgresSessionStore(dsn, max_size=4), dsn=dsn)
    yield b
    for store in b.opened:
        await store.close()
