"""The embedded durable session store: one SQLite file.

Connections (one writer thread, one reader), transactions and migrations:
see `sqlite_base`; the run methods: `sqlite_runs`; schema: `migrations`;
semantics: `base` and the reference `memory` store.
"""

from __future__ import annotations

import builtins
import sqlite3
from typing import Any

from pilothouse.errors import session_not_found
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store import sqlite_search
from pilothouse.runtime.store.agent_store import SqliteAgents
from pilothouse.runtime.store.base import (
    CompactMarker,
    SessionRecord,
    SessionState,
    TranscriptItem,
)
from pilothouse.runtime.store.codec import (
    ITEM_COLUMNS,
    RECORD_COLUMNS,
    decode_item,
    decode_rows,
    decode_visible,
    encode_item,
    encode_tools,
    record_from_row,
    record_params,
)
from pilothouse.runtime.store.common import session_exists, visible_history
from pilothouse.runtime.store.feed import SqliteFeed
from pilothouse.runtime.store.hook_state import (
    DELETE_SESSION_SCOPE_SQLITE,
    SqliteHookState,
    session_scope,
)
from pilothouse.runtime.store.sqlite_base import PAGE_SIZE
from pilothouse.runtime.store.sqlite_runs import INSERT_ITEM, SqliteRuns

__all__ = ["PAGE_SIZE", "SqliteSessionStore"]

_SELECT = f"SELECT {RECORD_COLUMNS} FROM sessions"
_RETURNING = f"RETURNING {RECORD_COLUMNS}"
_ITEM_COLUMNS = ", ".join(f"i.{column}" for column in ITEM_COLUMNS)


class SqliteSessionStore(SqliteRuns, SqliteAgents, SqliteHookState, SqliteFeed):
    """Sessions in the SQLite file at `path` (created if missing; its
    directory must exist).

    `busy_timeout_s` is how long a statement waits for a lock held by
    another process before the store reports UnavailableError. Every method
    raises `UnavailableError` (reason STORE_UNAVAILABLE) when the file
    cannot be opened, is locked past the timeout, is not a database, or the
    store is not open.
    """

    # --- sessions ---------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        """Insert `record` with an empty history. AlreadyExistsError
        (reason SESSION_EXISTS) if its id is taken."""
        try:
            await self._write(
                f"INSERT INTO sessions ({RECORD_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                record_params(record), inline=True,
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
        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                raise session_not_found(session_id)
            conn.execute("DELETE FROM transcript_items WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM message_texts WHERE session_id = ?", (session_id,))
            conn.execute(
                "DELETE FROM run_events WHERE run_id IN (SELECT id FROM runs WHERE session_id = ?)",
                (session_id,),
            )
            conn.execute("DELETE FROM runs WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM run_owners WHERE session_id = ?", (session_id,))
            conn.execute(DELETE_SESSION_SCOPE_SQLITE, (session_scope(session_id),))

        await self._transaction(delete)

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

    #: Full-text search (see `sqlite_search`).
    search_sessions = sqlite_search.search_sessions

    # --- metadata ---------------------------------------------------------

    async def compact(self, session_id: str, summary: str, now: float) -> SessionRecord:
        marker = encode_item(CompactMarker(summary, now))

        def compact(conn: sqlite3.Connection) -> Any:
            row = conn.execute(
                "UPDATE sessions SET history_seq = next_seq, next_seq = next_seq + 1, "
                f"message_count = 1, updated_at = ? WHERE id = ? {_RETURNING}, history_seq",
                (now, session_id),
            ).fetchone()
            if row is None:
                raise session_not_found(session_id)
            conn.execute(INSERT_ITEM, (session_id, row[-1], *marker))
            return row

        return record_from_row(await self._transaction(compact))

    async def _update(
        self, session_id: str, assignments: str, params: tuple[Any, ...]
    ) -> SessionRecord:
        rows = await self._write(
            f"UPDATE sessions SET {assignments} WHERE id = ? {_RETURNING}", (*params, session_id),
            inline=True,
        )
        if not rows:
            raise session_not_found(session_id)
        return record_from_row(rows[0])

    async def set_state(self, session_id: str, state: SessionState, now: float) -> SessionRecord:
        return await self._update(session_id, "state = ?, updated_at = ?", (state.value, now))

    async def set_title(self, session_id: str, title: str, now: float) -> SessionRecord:
        return await self._update(session_id, "title = ?", (title,))

    async def add_approved_tool(self, session_id: str, tool: str) -> SessionRecord:
        def add(conn: sqlite3.Connection) -> SessionRecord:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise session_not_found(session_id)
            record = record_from_row(row)
            if tool not in record.always_approved_tools:
                record.always_approved_tools.append(tool)
                conn.execute(
                    "UPDATE sessions SET always_approved_tools = ? WHERE id = ?",
                    (encode_tools(record.always_approved_tools), session_id),
                )
            return record

        return await self._transaction(add)

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

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO sessions ({RECORD_COLUMNS}, next_seq, history_seq) "
                f"VALUES ({', '.join('?' * 18)})",
                (*params, len(items), history_seq),
            )
            conn.executemany(INSERT_ITEM, rows)

        try:
            await self._transaction(insert)
        except sqlite3.IntegrityError as exc:
            raise session_exists(record.id) from exc


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

