"""The state hook plugins keep in the session store (schema version 7).

Values are JSON text under (plugin, scope, key); a plugin reads one
scope's values at once, oldest first. A scope `session:<id>` belongs to
that session: deleting the session deletes it (`session_scope`). Each
backend's store mixes in its class here; the semantics are those of
`HookStateStore`.
"""

from __future__ import annotations

import builtins
import itertools
from typing import Any, Protocol

SESSION_SCOPE_PREFIX = "session:"
#: Orders the memory store's writes that share a timestamp.
_WRITES = itertools.count()


def session_scope(session_id: str) -> str:
    """The scope that belongs to a session (deleted with it)."""
    return SESSION_SCOPE_PREFIX + session_id


class HookStateStore(Protocol):
    """The hook state side of a `SessionStore`."""

    async def put_hook_value(self, plugin: str, scope: str, key: str, value: str, now: float) -> None:
        """Store `value` (JSON text) under (plugin, scope, key), replacing
        what was there; `now` is Unix seconds."""
        ...

    async def hook_values(self, plugin: str, scope: str) -> builtins.list[tuple[str, str]]:
        """(key, JSON text) pairs of one scope, oldest write first."""
        ...

    async def delete_hook_values(self, plugin: str, scope: str, key: str | None = None) -> int:
        """Delete one key, or the whole scope with `key` None; how many
        values went."""
        ...


class MemoryHookState:
    """Hook state in a dict (the memory store)."""

    #: (plugin, scope) → key → (write time, write number, JSON text).
    _hook_state: dict[tuple[str, str], dict[str, tuple[float, int, str]]]

    def _hook_scope(self, plugin: str, scope: str) -> dict[str, tuple[float, int, str]]:
        if "_hook_state" not in self.__dict__:
            self._hook_state = {}
        return self._hook_state.setdefault((plugin, scope), {})

    async def put_hook_value(self, plugin: str, scope: str, key: str, value: str, now: float) -> None:
        values = self._hook_scope(plugin, scope)
        values.pop(key, None)
        values[key] = (now, next(_WRITES), value)

    async def hook_values(self, plugin: str, scope: str) -> builtins.list[tuple[str, str]]:
        values = self._hook_scope(plugin, scope)
        ordered = sorted(values.items(), key=lambda item: item[1][:2])
        return [(key, value) for key, (_, _, value) in ordered]

    async def delete_hook_values(self, plugin: str, scope: str, key: str | None = None) -> int:
        values = self._hook_scope(plugin, scope)
        if key is None:
            count = len(values)
            values.clear()
            return count
        return 1 if values.pop(key, None) is not None else 0

    def _delete_session_hook_state(self, session_id: str) -> None:
        if "_hook_state" in self.__dict__:
            scope = session_scope(session_id)
            for plugin_scope in [k for k in self._hook_state if k[1] == scope]:
                del self._hook_state[plugin_scope]


#: Upsert of one value (both backends; placeholders filled per driver).
_UPSERT = (
    "INSERT INTO hook_state (plugin, scope, key, value, updated_at) VALUES ({0}, {1}, {2}, {3}, {4})"
    " ON CONFLICT (plugin, scope, key) DO UPDATE SET value = excluded.value,"
    " updated_at = excluded.updated_at"
)
_SELECT = (
    "SELECT key, value FROM hook_state WHERE plugin = {0} AND scope = {1} ORDER BY updated_at, key"
)
#: Deleting a session's scope, inside the session's delete transaction.
DELETE_SESSION_SCOPE_SQLITE = "DELETE FROM hook_state WHERE scope = ?"


class _SqliteDriver(Protocol):
    async def _read(self, sql: str, params: tuple[Any, ...]) -> builtins.list[Any]: ...

    async def _write(self, sql: str, params: tuple[Any, ...]) -> builtins.list[Any]: ...


class SqliteHookState:
    """Hook state in the SQLite file."""

    async def put_hook_value(
        self: _SqliteDriver, plugin: str, scope: str, key: str, value: str, now: float
    ) -> None:
        await self._write(_UPSERT.format(*"?????"), (plugin, scope, key, value, now))

    async def hook_values(
        self: _SqliteDriver, plugin: str, scope: str
    ) -> builtins.list[tuple[str, str]]:
        rows = await self._read(_SELECT.format("?", "?"), (plugin, scope))
        return [(row[0], row[1]) for row in rows]

    async def delete_hook_values(
        self: _SqliteDriver, plugin: str, scope: str, key: str | None = None
    ) -> int:
        if key is None:
            rows = await self._write(
                "DELETE FROM hook_state WHERE plugin = ? AND scope = ? RETURNING 1", (plugin, scope)
            )
        else:
            rows = await self._write(
                "DELETE FROM hook_state WHERE plugin = ? AND scope = ? AND key = ? RETURNING 1",
                (plugin, scope, key),
            )
        return len(rows)


class _PostgresDriver(Protocol):
    async def _fetch(self, sql: str, *args: Any) -> builtins.list[Any]: ...


class PostgresHookState:
    """Hook state in PostgreSQL."""

    async def put_hook_value(
        self: _PostgresDriver, plugin: str, scope: str, key: str, value: str, now: float
    ) -> None:
        await self._fetch(_UPSERT.format("$1", "$2", "$3", "$4", "$5"), plugin, scope, key, value, now)

    async def hook_values(
        self: _PostgresDriver, plugin: str, scope: str
    ) -> builtins.list[tuple[str, str]]:
        rows = await self._fetch(_SELECT.format("$1", "$2"), plugin, scope)
        return [(row[0], row[1]) for row in rows]

    async def delete_hook_values(
        self: _PostgresDriver, plugin: str, scope: str, key: str | None = None
    ) -> int:
        if key is None:
            rows = await self._fetch(
                "DELETE FROM hook_state WHERE plugin = $1 AND scope = $2 RETURNING 1", plugin, scope
            )
        else:
            rows = await self._fetch(
                "DELETE FROM hook_state WHERE plugin = $1 AND scope = $2 AND key = $3 RETURNING 1",
                plugin, scope, key,
            )
        return len(rows)


__all__ = [
    "DELETE_SESSION_SCOPE_SQLITE",
    "HookStateStore",
    "MemoryHookState",
    "PostgresHookState",
    "SqliteHookState",
    "session_scope",
]
