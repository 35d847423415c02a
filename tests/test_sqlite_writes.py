"""The SQLite store's small writes run on the event loop's thread when they
can (see `runtime/store/sqlite_base.py`): a file locked by another
connection sends them to the writer thread, which waits for the lock
without holding up the loop, and the WAL is still checkpointed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pilothouse.errors import UnavailableError
from pilothouse.runtime.store import sqlite_base
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.stores import record


@contextlib.asynccontextmanager
async def locked_store(
    tmp_path: Path, busy_timeout_s: float
) -> AsyncIterator[tuple[SqliteSessionStore, sqlite3.Connection]]:
    """An open store, and another connection (another process's writer)
    holding the file's write lock; the store is closed after."""
    path = tmp_path / "sessions.db"
    store = SqliteSessionStore(path, busy_timeout_s=busy_timeout_s)
    await store.open()
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        yield store, other
    finally:
        await store.close()


async def test_a_write_that_finds_the_file_locked_waits_in_the_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    async with locked_store(tmp_path, busy_timeout_s=3.0) as (store, other):
        loop = asyncio.get_running_loop()
        started = loop.time()
        create = asyncio.create_task(store.create(record("s1")))
        for _ in range(20):  # the loop keeps running while the write waits
            await asyncio.sleep(0.01)
        # A wait for the lock on the loop's thread would have held these
        # sleeps for the whole busy timeout (3 s).
        assert loop.time() - started < 1.5
        assert not create.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(create, 5)
        stored = await store.get("s1")
        assert stored is not None and stored.id == "s1"
        # Once the thread is idle again, writes go inline and succeed.
        await store.create(record("s2"))
        assert await store.get("s2") is not None


async def test_a_write_locked_out_past_the_busy_timeout_is_unavailable_and_writes_nothing(
    tmp_path: Path,
) -> None:
    async with locked_store(tmp_path, busy_timeout_s=0.2) as (store, other):
        with pytest.raises(UnavailableError, match="locked"):
            await store.create(record("s1"))
        other.execute("ROLLBACK")
        other.close()
        assert await store.get("s1") is None


async def test_inline_writes_still_checkpoint_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteSessionStore(path)
    await store.open()
    writes = 3 * sqlite_base.CHECKPOINT_EVERY
    try:
        for i in range(writes):
            await store.create(record(f"s{i}"))
        await asyncio.sleep(0.2)  # the last queued checkpoint
        # Without checkpoints every commit appends at least one frame to
        # the WAL; with them the WAL restarts from its beginning.
        probe = sqlite3.connect(path, isolation_level=None)
        try:
            [(_, frames, _)] = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            probe.close()
        assert 0 <= frames < sqlite_base.CHECKPOINT_EVERY * 4
        listed = await store.list(agent="assistant", created_by="me", state=None, offset=0, limit=writes + 1)
        assert len(listed) == writes
    finally:
        await store.close()
