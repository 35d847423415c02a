"""The embedded durable session store: one SQLite file (aiosqlite).

WAL journal with `synchronous=NORMAL` (a commit is durable against a
process crash at once and against power loss at the next checkpoint),
one writer connection whose transactions are serialised by an
`asyncio.Lock`, and one read-only connection, so reads never wait behind
a write and always see committed data only. Schema and migrations: see
`migrations`; semantics: see `base` and the reference `memory` store.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from pilothouse.errors import UnavailableError, agent_exists, session_not_found
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store.base import (
    AgentRecord,
    CompactMarker,
    SessionRecord,
    SessionState,
    TranscriptItem,
)
from pilothouse.runtime.store.codec import (
    ITEM_COLUMNS,
    RECORD_COLUMNS,
    agent_config_text,
    agent_from_row,
    decode_item,
    decode_rows,
    decode_visible,
    encode_item,
    encode_tools,
    record_from_row,
    record_params,
    stored_size,
)
from pilothouse.runtime.store.common import session_exists, visible_history
from pilothouse.runtime.store.migrations import (
    INSERT_AGENT,
    LATEST_VERSION,
    SCHEMA_MIGRATIONS_TABLE,
    SELECT_AGENT,
    UPSERT_AGENT,
    pending,
)
from pilothouse.runtime.store.sqlite_runs import SqliteRuns

log = logging.getLogger(__name__)

#: Page size of new database files, bytes.
PAGE_SIZE = 8192

_SELECT = f"SELECT {RECORD_COLUMNS} FROM sessions"
_RETURNING = f"RETURNING {RECORD_COLUMNS}"
_INSERT_ITEM = (
    f"INSERT INTO transcript_items (session_id, seq, {', '.join(ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(ITEM_COLUMNS) + 1))}, ?)"
)
_ITEM_COLUMNS = ", ".join(f"i.{column}" for column in ITEM_COLUMNS)


def _unavailable(path: Path, exc: BaseException) -> UnavailableError:
    return UnavailableError(
        f"session store {str(path)!r} is unavailable: {exc}",
        reason="STORE_UNAVAILABLE",
        metadata={"store": "sqlite", "path": str(path)},
    )


class SqliteSessionStore(SqliteRuns):
    """Sessions in the SQLite file at `path` (created if missing; its
    directory must exist).

    `busy_timeout_s` is how long a statement waits for a lock held by
    another process before the store reports UnavailableError. Every method
    raises `UnavailableError` (reason STORE_UNAVAILABLE) when the file
    cannot be opened, is locked past the timeout, is not a database, or the
    store is not open.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # --- connections ------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Map driver errors meaning "the database cannot be used" (cannot
        open, locked, I/O error, corrupt, closed) to UnavailableError;
        constraint and programming errors are bugs and pass through."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise _unavailable(self.path, exc) from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # Integrity/Programming/...
                raise
            raise _unavailable(self.path, exc) from exc  # e.g. "file is not a database"
        except ValueError as exc:  # aiosqlite: "no active connection"
            if "connection" not in str(exc):
                raise
            raise _unavailable(self.path, exc) from exc

    async def _connect(self, *, read_only: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if read_only:
                await conn.execute("PRAGMA query_only = ON")
            else:
                # Only takes effect on a new file: larger pages keep a
                # session's long messages inline in the b-tree.
                await conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                mode = (await conn.execute_fetchall("PRAGMA journal_mode = WAL"))[0][0]
                if mode.lower() != "wal":
                    log.warning("sqlite store %s: journal mode is %s, not wal", self.path, mode)
                await conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await conn.close()
            raise
        return conn

    def _write_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise _unavailable(self.path, RuntimeError("the store is not open"))
        return self._writer

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise _unavailable(self.path, RuntimeError("the store is not open"))
        return self._reader

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`): committed when the body
        returns, rolled back when it raises."""
        conn = self._write_conn()
        async with self._lock:
            with self._errors():
                if conn.in_transaction:  # defensive: left open by an earlier failure
                    await conn.execute("ROLLBACK")
                try:
                    # Inside the try: a BEGIN whose caller was cancelled still
                    # runs on the connection's thread, and the ROLLBACK queued
                    # after it must close that transaction.
                    await conn.execute("BEGIN IMMEDIATE")
                    yield conn
                except BaseException:
                    with contextlib.suppress(sqlite3.Error, ValueError):
                        await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> builtins.list[Any]:
        conn = self._read_conn()
        with self._errors():
            return list(await conn.execute_fetchall(sql, params))

    async def _write(self, sql: str, params: tuple[Any, ...]) -> builtins.list[Any]:
        """One statement in autocommit mode (atomic by itself)."""
        conn = self._write_conn()
        async with self._lock:
            with self._errors():
                return list(await conn.execute_fetchall(sql, params))

    async def _exists(self, session_id: str) -> bool:
        return bool(await self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)))

    async def _require(self, session_id: str) -> None:
        if not await self._exists(session_id):
            raise session_not_found(session_id)

    # --- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Open the file (creating it), switch it to WAL and apply pending
        migrations. UnavailableError when the file cannot be used."""
        if self._writer is not None:
            return
        try:
            with self._errors():
                self._writer = await self._connect(read_only=False)
                await self._migrate(self._writer)
                self._reader = await self._connect(read_only=True)
        except BaseException:
            await self.close()
            raise

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(SCHEMA_MIGRATIONS_TABLE)
            rows = await conn.execute_fetchall("SELECT version FROM schema_migrations")
            applied = {row[0] for row in rows}
            for migration in pending(applied):
                for statement in migration.sqlite:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                log.info(
                    "sqlite store %s: applied migration %d (%s)",
                    self.path,
                    migration.version,
                    migration.name,
                )
            if applied and max(applied) > LATEST_VERSION:
                log.warning(
                    "sqlite store %s: schema version %d is newer than this server's %d",
                    self.path,
                    max(applied),
                    LATEST_VERSION,
                )
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        for name in ("_reader", "_writer"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()

    # --- sessions ---------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        """Insert `record` with an empty history. AlreadyExistsError
        (reason SESSION_EXISTS) if its id is taken."""
        try:
            await self._write(
                f"INSERT INTO sessions ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                record_params(record),
            )
        except sqlite3.IntegrityError as exc:
            raise session_exists(record.id) from exc

    async def get(self, session_id: str) -> SessionRecord | None:
        rows = await self._read(f"{_SELECT} WHERE id = ?", (session_id,))
        return record_from_row(rows[0]) if rows else None

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        rows = await self._read(
            f"{_SELECT} WHERE agent = ? AND created_by = ? AND state = 'open' "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            (agent, created_by),
        )
        return record_from_row(rows[0]) if rows else None

    async def list(
        self,
        *,
        agent: str,
        created_by: str,
        state: SessionState | None,
        offset: int,
        limit: int,
    ) -> builtins.list[SessionRecord]:
        where, params = _filters(agent, created_by, state)
        rows = await self._read(
            f"{_SELECT}{where} ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, max(limit, 0), max(offset, 0)),
        )
        return [record_from_row(row) for row in rows]

    async def delete(self, session_id: str) -> None:
        async with self._transaction() as conn:
            cursor = await conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            if cursor.rowcount == 0:
                raise session_not_found(session_id)
            await conn.execute("DELETE FROM transcript_items WHERE session_id = ?", (session_id,))
            await conn.execute(
                "DELETE FROM run_events WHERE run_id IN (SELECT id FROM runs WHERE session_id = ?)",
                (session_id,),
            )
            await conn.execute("DELETE FROM runs WHERE session_id = ?", (session_id,))
            await conn.execute("DELETE FROM run_owners WHERE session_id = ?", (session_id,))

    # --- history ----------------------------------------------------------

    async def _items_from(self, session_id: str, *, visible: bool) -> builtins.list[Any]:
        """(kind, payload, created_at) rows of the history (`visible`) or
        the whole transcript, in one statement (one snapshot); NotFound for
        an unknown session."""
        start = "s.history_seq" if visible else "0"
        rows = await self._read(
            f"SELECT {_ITEM_COLUMNS} FROM sessions s "
            f"LEFT JOIN transcript_items i ON i.session_id = s.id AND i.seq >= {start} "
            "AND i.seq < s.next_seq "
            "WHERE s.id = ? ORDER BY i.seq",
            (session_id,),
        )
        if not rows:
            raise session_not_found(session_id)
        if rows[0][0] is None:  # the session, no items
            return []
        return rows

    async def load_history(self, session_id: str) -> builtins.list[Message]:
        return decode_rows(await self._items_from(session_id, visible=True), decode_visible)

    async def list_messages(
        self,
        session_id: str,
        offset: int,
        limit: int,
        *,
        newest_first: bool = False,
        max_bytes: int = 0,
    ) -> builtins.list[Message]:
        # The history is the contiguous seq range [history_seq, next_seq):
        # a page is a range of the primary key, whatever the offset.
        if newest_first:
            sql = (
                f"SELECT {_ITEM_COLUMNS} FROM sessions s "
                "JOIN transcript_items i ON i.session_id = s.id "
                "AND i.seq >= s.history_seq "
                "AND i.seq > s.next_seq - 1 - :offset - :limit "
                "AND i.seq <= s.next_seq - 1 - :offset "
                "WHERE s.id = :id ORDER BY i.seq DESC"
            )
        else:
            sql = (
                f"SELECT {_ITEM_COLUMNS} FROM sessions s "
                "JOIN transcript_items i ON i.session_id = s.id "
                "AND i.seq >= s.history_seq + :offset "
                "AND i.seq < s.history_seq + :offset + :limit "
                "WHERE s.id = :id ORDER BY i.seq"
            )
        params = {"id": session_id, "offset": max(offset, 0), "limit": max(limit, 0)}
        rows = await self._read_page(sql, params, max_bytes)
        if not rows:
            await self._require(session_id)
        return decode_rows(rows, decode_visible)

    async def transcript(self, session_id: str) -> builtins.list[TranscriptItem]:
        return decode_rows(await self._items_from(session_id, visible=False), decode_item)

    async def transcript_page(
        self, session_id: str, offset: int, limit: int, *, max_bytes: int = 0
    ) -> builtins.list[TranscriptItem]:
        sql = (
            f"SELECT {_ITEM_COLUMNS} FROM sessions s "
            "JOIN transcript_items i ON i.session_id = s.id "
            "AND i.seq >= :offset AND i.seq < :offset + :limit AND i.seq < s.next_seq "
            "WHERE s.id = :id ORDER BY i.seq"
        )
        params = {"id": session_id, "offset": max(offset, 0), "limit": max(limit, 0)}
        rows = await self._read_page(sql, params, max_bytes)
        if not rows:
            await self._require(session_id)
        return decode_rows(rows, decode_item)

    async def _read_page(self, sql: str, params: dict[str, Any], max_bytes: int) -> builtins.list[Any]:
        """The item rows of `sql`, only as many as fit in `max_bytes` of
        stored size (at least one) when it is > 0: read from one statement
        (one snapshot) in growing batches, so that rows past the budget are
        never read."""
        if max_bytes <= 0:
            return await self._read(sql, params)
        conn = self._read_conn()
        rows: builtins.list[Any] = []
        total, batch = 0, 8
        with self._errors():
            async with conn.execute(sql, params) as cursor:
                while True:
                    fetched = await cursor.fetchmany(batch)
                    for row in fetched:
                        total += stored_size(row)
                        if total > max_bytes and rows:
                            return rows
                        rows.append(row)
                    if len(fetched) < batch:
                        return rows
                    batch = min(batch * 2, 256)

    # --- metadata ---------------------------------------------------------

    async def compact(self, session_id: str, summary: str, now: float) -> SessionRecord:
        marker = encode_item(CompactMarker(summary, now))
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE sessions SET history_seq = next_seq, next_seq = next_seq + 1, "
                f"message_count = 1, updated_at = ? WHERE id = ? {_RETURNING}, history_seq",
                (now, session_id),
            )
            if not rows:
                raise session_not_found(session_id)
            await conn.execute(_INSERT_ITEM, (session_id, rows[0][-1], *marker))
        return record_from_row(rows[0])

    async def _update(
        self, session_id: str, assignments: str, params: tuple[Any, ...]
    ) -> SessionRecord:
        rows = await self._write(
            f"UPDATE sessions SET {assignments} WHERE id = ? {_RETURNING}", (*params, session_id)
        )
        if not rows:
            raise session_not_found(session_id)
        return record_from_row(rows[0])

    async def set_state(self, session_id: str, state: SessionState, now: float) -> SessionRecord:
        return await self._update(session_id, "state = ?, updated_at = ?", (state.value, now))

    async def set_title(self, session_id: str, title: str, now: float) -> SessionRecord:
        return await self._update(session_id, "title = ?", (title,))

    async def add_approved_tool(self, session_id: str, tool: str) -> SessionRecord:
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(f"{_SELECT} WHERE id = ?", (session_id,))
            if not rows:
                raise session_not_found(session_id)
            record = record_from_row(rows[0])
            if tool in record.always_approved_tools:
                return record
            record.always_approved_tools.append(tool)
            await conn.execute(
                "UPDATE sessions SET always_approved_tools = ? WHERE id = ?",
                (encode_tools(record.always_approved_tools), session_id),
            )
        return record

    async def import_session(self, record: SessionRecord, items: builtins.list[TranscriptItem]) -> None:
        """Insert `record` (message_count recomputed from `items`) and its
        transcript in one transaction. AlreadyExistsError if the id is
        taken; nothing is written then."""
        params = list(record_params(record))
        params[7] = len(visible_history(items))
        history_seq = max(
            (i for i, item in enumerate(items) if isinstance(item, CompactMarker)), default=0
        )
        rows = [(record.id, i, *encode_item(item)) for i, item in enumerate(items)]
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    f"INSERT INTO sessions ({RECORD_COLUMNS}, next_seq, history_seq) "
                    f"VALUES ({', '.join('?' * 16)})",
                    (*params, len(items), history_seq),
                )
                await conn.executemany(_INSERT_ITEM, rows)
        except sqlite3.IntegrityError as exc:
            raise session_exists(record.id) from exc

    # --- agents -----------------------------------------------------------

    async def put_agent(self, record: AgentRecord, *, replace: bool) -> AgentRecord:
        params = (record.name, agent_config_text(record.config), record.source, record.updated_at)
        sql = (UPSERT_AGENT if replace else INSERT_AGENT).format(p1="?1", p2="?2", p3="?3", p4="?4")
        async with self._transaction() as conn:
            try:
                await conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                raise agent_exists(record.name) from exc
            rows = list(await conn.execute_fetchall(f"{SELECT_AGENT} WHERE name = ?", (record.name,)))
        return agent_from_row(rows[0])

    async def get_agent(self, name: str) -> AgentRecord | None:
        rows = await self._read(f"{SELECT_AGENT} WHERE name = ?", (name,))
        return agent_from_row(rows[0]) if rows else None

    async def list_agents(self) -> builtins.list[AgentRecord]:
        return [agent_from_row(r) for r in await self._read(f"{SELECT_AGENT} ORDER BY name", ())]

    async def delete_agent(self, name: str) -> bool:
        rows = await self._write("DELETE FROM agents WHERE name = ? RETURNING name", (name,))
        return bool(rows)



def _filters(agent: str, created_by: str, state: SessionState | None) -> tuple[str, builtins.list[Any]]:
    """A WHERE clause for the non-empty `list` filters and its parameters."""
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    for column, value in (
        ("agent", agent),
        ("created_by", created_by),
        ("state", state.value if state else ""),
    ):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

