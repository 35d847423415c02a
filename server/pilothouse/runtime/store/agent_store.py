"""The agent registry in each backend (schema versions 2 and 9): `agents`
holds each agent's latest version, `agent_versions` every version's config,
and a session's binding (`sessions.agent_uid`, `agent_version`) says which
agent and version its runs use. Each store mixes in its class here; the
semantics are those of `base.AgentStore` and `SessionStore.bind_session`.

Configs are canonical JSON text (`codec.agent_config_text`: sorted keys), so
equal configs compare equal in SQL.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import json
import sqlite3
from typing import Any, Protocol

import asyncpg

from pilothouse.errors import AbortedError, agent_exists, session_not_found
from pilothouse.runtime.store.base import AgentRecord, SessionRecord
from pilothouse.runtime.store.codec import RECORD_COLUMNS, agent_config_text, record_from_row

_AGENT_COLUMNS = "name, config, source, version, created_at, updated_at, uid, created_by, removed"
SELECT_AGENT = f"SELECT {_AGENT_COLUMNS} FROM agents"
#: A version, with the agent's own uid, registration time and state.
_SELECT_VERSION = (
    "SELECT v.name, v.config, v.source, v.version, a.created_at, v.created_at, a.uid,"
    " v.created_by, a.removed FROM agent_versions v JOIN agents a ON a.name = v.name"
)
_INSERT = (
    f"INSERT INTO agents ({_AGENT_COLUMNS})"
    " VALUES ({p1}, {p2}, {p3}, 1, {p4}, {p4}, {p5}, {p6}, 0)"
)
_CHANGED = "agents.config <> excluded.config OR agents.source <> excluded.source"
_NEW_SOURCE = "agents.source <> excluded.source"
#: A replaced agent's version goes up only when its config or source
#: changed; it is a new agent (uid, creator) only when its source changed.
_UPSERT = (
    _INSERT + " ON CONFLICT (name) DO UPDATE SET config = excluded.config,"
    f" source = excluded.source,"
    f" version = CASE WHEN {_CHANGED} THEN agents.version + 1 ELSE agents.version END,"
    f" updated_at = CASE WHEN {_CHANGED} THEN excluded.updated_at ELSE agents.updated_at END,"
    f" uid = CASE WHEN {_NEW_SOURCE} THEN excluded.uid ELSE agents.uid END,"
    f" created_by = CASE WHEN {_NEW_SOURCE} THEN excluded.created_by ELSE agents.created_by END,"
    f" removed = 0 WHERE {_CHANGED} OR agents.removed <> 0"
)
#: The agent's current version into `agent_versions` (once).
_KEEP_VERSION = (
    "INSERT INTO agent_versions (name, version, config, source, created_by, created_at)"
    " SELECT name, version, config, source, created_by, updated_at FROM agents"
    " WHERE name = {p1} ON CONFLICT (name, version) DO NOTHING"
)
_UPDATE = (
    "UPDATE agents SET config = {p2}, version = version + 1, updated_at = {p4}"
    " WHERE name = {p1} AND version = {p3} AND config <> {p2}"
)


def agent_from_row(row: Any) -> AgentRecord:
    """An `AgentRecord` from a row of the agent columns."""
    name, config, source, version, created_at, updated_at, uid, created_by, removed = tuple(row)
    return AgentRecord(name, json.loads(config), source, int(version), float(created_at),
                       float(updated_at), uid, created_by, bool(removed))


def version_conflict(name: str, expected: int, actual: int) -> AbortedError:
    return AbortedError(
        f"agent {name!r} is at version {actual}, not {expected}: read it again and retry",
        reason="AGENT_VERSION_CONFLICT",
        metadata={"agent": name, "version": str(actual)},
    )


def _sql(template: str, marks: tuple[str, ...]) -> str:
    return template.format(**{f"p{i}": m for i, m in enumerate(marks, 1)})


_Q = tuple(f"?{i}" for i in range(1, 7))
_D = tuple(f"${i}" for i in range(1, 7))


# --- memory -------------------------------------------------------------------


class MemoryAgents:
    """The registry in dicts (the memory store)."""

    _agents: dict[str, AgentRecord]
    _agent_versions: dict[str, dict[int, AgentRecord]]
    _records: dict[str, SessionRecord]

    def _versions(self, name: str) -> dict[int, AgentRecord]:
        if "_agent_versions" not in self.__dict__:
            self._agent_versions = {}
        return self._agent_versions.setdefault(name, {})

    def _keep(self, record: AgentRecord) -> AgentRecord:
        self._agents[record.name] = record
        self._versions(record.name).setdefault(record.version, record)
        return _copy(record)

    async def put_agent(self, record: AgentRecord, *, replace: bool) -> AgentRecord:
        current = self._agents.get(record.name)
        if current is None:
            return self._keep(dataclasses.replace(
                record, config=copy.deepcopy(record.config), version=1,
                updated_at=record.created_at, removed=False,
            ))
        if not replace:
            raise agent_exists(record.name)
        if current.config == record.config and current.source == record.source:
            return self._keep(dataclasses.replace(current, removed=False))
        new_source = current.source != record.source
        return self._keep(dataclasses.replace(
            current,
            config=copy.deepcopy(record.config),
            source=record.source,
            version=current.version + 1,
            updated_at=record.updated_at,
            uid=record.uid if new_source else current.uid,
            created_by=record.created_by if new_source else current.created_by,
            removed=False,
        ))

    async def update_agent(
        self, name: str, config: dict[str, Any], *, expected_version: int, now: float
    ) -> AgentRecord | None:
        current = self._agents.get(name)
        if current is None:
            return None
        if current.version != expected_version:
            raise version_conflict(name, expected_version, current.version)
        if current.config == config:
            return _copy(current)
        return self._keep(dataclasses.replace(
            current, config=copy.deepcopy(config), version=current.version + 1, updated_at=now
        ))

    async def set_agent_removed(self, name: str, removed: bool) -> bool:
        current = self._agents.get(name)
        if current is None:
            return False
        self._agents[name] = dataclasses.replace(current, removed=removed)
        return True

    async def get_agent(self, name: str) -> AgentRecord | None:
        record = self._agents.get(name)
        return _copy(record) if record else None

    async def get_agent_version(self, name: str, version: int) -> AgentRecord | None:
        current = self._agents.get(name)
        kept = self._versions(name).get(version) if current else None
        if current is None or kept is None:
            return None
        return _copy(dataclasses.replace(kept, uid=current.uid, removed=current.removed))

    async def list_agent_versions(
        self, name: str, *, before: int, limit: int
    ) -> builtins.list[AgentRecord]:
        current = self._agents.get(name)
        if current is None:
            return []
        versions = sorted((v for v in self._versions(name) if not before or v < before), reverse=True)
        return [_copy(dataclasses.replace(self._versions(name)[v], uid=current.uid,
                                          removed=current.removed))
                for v in versions[:limit]]

    async def list_agents(self) -> builtins.list[AgentRecord]:
        return [_copy(r) for _, r in sorted(self._agents.items())]

    async def delete_agent(self, name: str) -> bool:
        self._versions(name).clear()
        return self._agents.pop(name, None) is not None

    async def bind_session(
        self, session_id: str, agent_uid: str, agent_version: int, now: float
    ) -> SessionRecord:
        record = self._records.get(session_id)
        if record is None:
            raise session_not_found(session_id)
        record.agent_uid, record.agent_version, record.updated_at = agent_uid, agent_version, now
        return copy.deepcopy(record)


def _copy(record: AgentRecord) -> AgentRecord:
    return dataclasses.replace(record, config=copy.deepcopy(record.config))


# --- SQLite -------------------------------------------------------------------


class _SqliteDriver(Protocol):
    async def _read(self, sql: str, params: tuple[Any, ...]) -> builtins.list[Any]: ...

    async def _transaction(self, body: Any) -> Any: ...


class SqliteAgents:
    """The registry in the SQLite file."""

    async def put_agent(self: _SqliteDriver, record: AgentRecord, *, replace: bool) -> AgentRecord:
        params = (record.name, agent_config_text(record.config), record.source, record.created_at,
                  record.uid, record.created_by)
        sql = _sql(_UPSERT if replace else _INSERT, _Q)

        def put(conn: sqlite3.Connection) -> Any:
            try:
                conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                raise agent_exists(record.name) from exc
            conn.execute(_sql(_KEEP_VERSION, _Q), (record.name,))
            return conn.execute(f"{SELECT_AGENT} WHERE name = ?", (record.name,)).fetchone()

        return agent_from_row(await self._transaction(put))

    async def update_agent(
        self: _SqliteDriver, name: str, config: dict[str, Any], *, expected_version: int, now: float
    ) -> AgentRecord | None:
        text = agent_config_text(config)

        def update(conn: sqlite3.Connection) -> Any:
            conn.execute(_sql(_UPDATE, _Q), (name, text, expected_version, now))
            conn.execute(_sql(_KEEP_VERSION, _Q), (name,))
            return conn.execute(f"{SELECT_AGENT} WHERE name = ?", (name,)).fetchone()

        row = await self._transaction(update)
        return _updated(name, row, text, expected_version)

    async def set_agent_removed(self: _SqliteDriver, name: str, removed: bool) -> bool:
        def mark(conn: sqlite3.Connection) -> Any:
            return conn.execute("UPDATE agents SET removed = ? WHERE name = ? RETURNING name",
                                (int(removed), name)).fetchall()

        return bool(await self._transaction(mark))

    async def get_agent(self: _SqliteDriver, name: str) -> AgentRecord | None:
        rows = await self._read(f"{SELECT_AGENT} WHERE name = ?", (name,))
        return agent_from_row(rows[0]) if rows else None

    async def get_agent_version(self: _SqliteDriver, name: str, version: int) -> AgentRecord | None:
        rows = await self._read(f"{_SELECT_VERSION} WHERE v.name = ? AND v.version = ?",
                                (name, version))
        return agent_from_row(rows[0]) if rows else None

    async def list_agent_versions(
        self: _SqliteDriver, name: str, *, before: int, limit: int
    ) -> builtins.list[AgentRecord]:
        rows = await self._read(
            f"{_SELECT_VERSION} WHERE v.name = ? AND (? = 0 OR v.version < ?)"
            " ORDER BY v.version DESC LIMIT ?",
            (name, before, before, limit),
        )
        return [agent_from_row(r) for r in rows]

    async def list_agents(self: _SqliteDriver) -> builtins.list[AgentRecord]:
        return [agent_from_row(r) for r in await self._read(f"{SELECT_AGENT} ORDER BY name", ())]

    async def delete_agent(self: _SqliteDriver, name: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM agent_versions WHERE name = ?", (name,))
            return bool(conn.execute("DELETE FROM agents WHERE name = ? RETURNING name",
                                     (name,)).fetchall())

        return bool(await self._transaction(delete))

    async def bind_session(
        self: _SqliteDriver, session_id: str, agent_uid: str, agent_version: int, now: float
    ) -> SessionRecord:
        def bind(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "UPDATE sessions SET agent_uid = ?, agent_version = ?, updated_at = ?"
                f" WHERE id = ? RETURNING {RECORD_COLUMNS}",
                (agent_uid, agent_version, now, session_id),
            ).fetchone()

        row = await self._transaction(bind)
        if row is None:
            raise session_not_found(session_id)
        return record_from_row(row)


def _updated(name: str, row: Any, text: str, expected: int) -> AgentRecord | None:
    """What `update_agent` returns for the row read after its UPDATE."""
    if row is None:
        return None
    record = agent_from_row(row)
    if record.version == expected + 1 and agent_config_text(record.config) == text:
        return record  # this update made it
    if record.version != expected:
        raise version_conflict(name, expected, record.version)
    return record  # unchanged config


# --- PostgreSQL ---------------------------------------------------------------


class _PostgresDriver(Protocol):
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[Any]: ...


#: The session columns with JSON read back as text.
_PG_RECORD = RECORD_COLUMNS.replace("always_approved_tools", "always_approved_tools::text").replace(
    "last_run_usage", "last_run_usage::text"
)


class PostgresAgents:
    """The registry in PostgreSQL."""

    async def put_agent(self: _PostgresDriver, record: AgentRecord, *, replace: bool) -> AgentRecord:
        async with self._transaction() as conn:
            try:
                async with conn.transaction():  # a savepoint: the error leaves the rest usable
                    await conn.execute(
                        _sql(_UPSERT if replace else _INSERT, _D), record.name,
                        agent_config_text(record.config), record.source, record.created_at,
                        record.uid, record.created_by,
                    )
            except asyncpg.UniqueViolationError as exc:
                raise agent_exists(record.name) from exc
            await conn.execute(_sql(_KEEP_VERSION, _D), record.name)
            row = await conn.fetchrow(f"{SELECT_AGENT} WHERE name = $1", record.name)
        return agent_from_row(row)

    async def update_agent(
        self: _PostgresDriver, name: str, config: dict[str, Any], *, expected_version: int,
        now: float,
    ) -> AgentRecord | None:
        text = agent_config_text(config)
        async with self._transaction() as conn:
            await conn.execute(_sql(_UPDATE, _D), name, text, expected_version, now)
            await conn.execute(_sql(_KEEP_VERSION, _D), name)
            row = await conn.fetchrow(f"{SELECT_AGENT} WHERE name = $1", name)
        return _updated(name, row, text, expected_version)

    async def set_agent_removed(self: _PostgresDriver, name: str, removed: bool) -> bool:
        rows = await self._fetch("UPDATE agents SET removed = $1 WHERE name = $2 RETURNING name",
                                 int(removed), name)
        return bool(rows)

    async def get_agent(self: _PostgresDriver, name: str) -> AgentRecord | None:
        rows = await self._fetch(f"{SELECT_AGENT} WHERE name = $1", name)
        return agent_from_row(rows[0]) if rows else None

    async def get_agent_version(
        self: _PostgresDriver, name: str, version: int
    ) -> AgentRecord | None:
        rows = await self._fetch(f"{_SELECT_VERSION} WHERE v.name = $1 AND v.version = $2",
                                 name, version)
        return agent_from_row(rows[0]) if rows else None

    async def list_agent_versions(
        self: _PostgresDriver, name: str, *, before: int, limit: int
    ) -> builtins.list[AgentRecord]:
        rows = await self._fetch(
            f"{_SELECT_VERSION} WHERE v.name = $1 AND ($2 = 0 OR v.version < $2)"
            " ORDER BY v.version DESC LIMIT $3",
            name, before, limit,
        )
        return [agent_from_row(r) for r in rows]

    async def list_agents(self: _PostgresDriver) -> builtins.list[AgentRecord]:
        return [agent_from_row(r) for r in await self._fetch(f"{SELECT_AGENT} ORDER BY name")]

    async def delete_agent(self: _PostgresDriver, name: str) -> bool:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM agent_versions WHERE name = $1", name)
            rows = await conn.fetch("DELETE FROM agents WHERE name = $1 RETURNING name", name)
        return bool(rows)

    async def bind_session(
        self: _PostgresDriver, session_id: str, agent_uid: str, agent_version: int, now: float
    ) -> SessionRecord:
        rows = await self._fetch(
            "UPDATE sessions SET agent_uid = $1, agent_version = $2, updated_at = $3"
            f" WHERE id = $4 RETURNING {_PG_RECORD}",
            agent_uid, agent_version, now, session_id,
        )
        if not rows:
            raise session_not_found(session_id)
        return record_from_row(rows[0])


__all__ = ["SELECT_AGENT", "MemoryAgents", "PostgresAgents", "SqliteAgents", "agent_from_row"]
