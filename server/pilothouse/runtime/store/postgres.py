"""The shared durable session store: PostgreSQL over asyncpg.

Several runtime replicas open the same database: they see each other's
sessions, and the run lease (a conditional UPDATE of the session row, held
until `lease_until`) lets at most one of them run a session at a time.

asyncpg rather than psycopg 3: it is asyncio-native with its own pool,
speaks the binary protocol and prepares and caches statements per
connection, which keeps an appended run at one round trip; the store needs
nothing psycopg has beyond that. (Behind PgBouncer in transaction mode, pass
`statement_cache_size=0`.)

Every write that must be atomic is one statement where it can be
(data-modifying CTEs), so it needs no explicit transaction and costs one
round trip: `checkpoint`, `compact` and `import_session` update the
session row and insert the transcript items together or not at all.
`begin_run` and `claim_runs`, which decide from what they read, are
transactions on one pooled connection (see `postgres_runs`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import asyncpg

from pilothouse.errors import UnavailableError, session_not_found
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store import postgres_search
from pilothouse.runtime.store.agent_store import PostgresAgents
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
    record_from_row,
    record_params,
)
from pilothouse.runtime.store.common import session_exists, visible_history
from pilothouse.runtime.store.feed import PostgresFeed
from pilothouse.runtime.store.hook_state import PostgresHookState, session_scope
from pilothouse.runtime.store.migrations import (
    LATEST_VERSION,
    SCHEMA_MIGRATIONS_TABLE,
    pending,
)
from pilothouse.runtime.store.postgres_runs import (
    ITEMS,
    T_ITEMS,
    PostgresRuns,
    item_arrays,
    unnest_items,
)

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key serialising migrations across replicas
#: (an arbitrary constant: "pilothouse" in ASCII, as a bigint).
MIGRATION_LOCK_KEY = 0x70696C6F74686F75

# JSON columns read back as text (no codec: one json.loads, where needed).
_COLUMNS = RECORD_COLUMNS.replace("always_approved_tools", "always_approved_tools::text").replace(
    "last_run_usage", "last_run_usage::text"
)
_SELECT = f"SELECT {_COLUMNS} FROM sessions"
_ITEM_COLUMNS = ", ".join(f"i.{c}" for c in ITEM_COLUMNS).replace("i.payload", "i.payload::text")
_RETURNING = f"RETURNING {_COLUMNS}"
#: `codec.stored_size` of the transcript item `i`, in SQL.
_STORED_SIZE = (
    "octet_length(i.content) + octet_length(i.sender) + octet_length(i.tool_call_id) "
    "+ octet_length(i.name) + COALESCE(octet_length(i.payload::text), 0)"
)
_T = TypeVar("_T")
_INSERT_COLUMNS = RECORD_COLUMNS
_INSERT_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14::jsonb, $15, $16"


_COMPACT = f"""
WITH s AS (
    UPDATE sessions SET history_seq = next_seq, next_seq = next_seq + 1,
        message_count = 1, updated_at = $2
    WHERE id = $1
    {_RETURNING}, history_seq
), marker AS (
    INSERT INTO transcript_items (session_id, seq, {ITEMS})
    SELECT s.id, s.history_seq, 'compact', '', $3, '', '', '', $4::json, $2 FROM s
)
SELECT * FROM s
"""

_IMPORT = f"""
WITH s AS (
    INSERT INTO sessions ({_INSERT_COLUMNS}, next_seq, history_seq)
    VALUES ({_INSERT_VALUES}, $17, $18)
    RETURNING id
), items AS (
    INSERT INTO transcript_items (session_id, seq, {ITEMS})
    SELECT s.id, t.ord - 1, {T_ITEMS}
    FROM s, {unnest_items(19)}
)
SELECT id FROM s
"""

#: Errors meaning "the database cannot be reached or used right now".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,  # connect or pool acquire timeout
    asyncpg.PostgresConnectionError,  # connection lost / does not exist
    asyncpg.InterfaceError,  # pool or connection closed
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after failover
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist
)


def _redacted(dsn: str) -> str:
    """`dsn` without its password, for messages and logs."""
    head, sep, tail = dsn.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return dsn
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


class PostgresSessionStore(PostgresRuns, PostgresAgents, PostgresHookState, PostgresFeed):
    """Sessions in the PostgreSQL database at `dsn` (a libpq URL,
    `postgresql://user:pass@host:port/db`), through a pool of `min_size` to
    `max_size` connections.

    `connect_timeout_s` bounds connecting and waiting for a pooled
    connection. Every method raises `UnavailableError` (reason
    STORE_UNAVAILABLE) when the server refuses or drops connections, the
    pool is closed, or the store is not open; the DSN in messages has its
    password masked.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = connect_timeout_s
        self._pool: asyncpg.Pool | None = None

    # --- connections ------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> UnavailableError:
        return UnavailableError(
            f"session store {_redacted(self.dsn)} is unavailable: {type(exc).__name__}: {exc}",
            reason="STORE_UNAVAILABLE",
            metadata={"store": "postgresql"},
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            if isinstance(exc, ValueError):  # asyncpg DataError: a bad argument, a bug
                raise
            raise self._unavailable(exc) from exc

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise self._unavailable(RuntimeError("the store is not open"))
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[asyncpg.Record]:
        pool = self._get_pool()
        with self._errors():
            conn = await pool.acquire(timeout=self._timeout)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await pool.release(conn)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on one pooled connection: committed when the body
        returns, rolled back when it raises."""
        pool = self._get_pool()
        with self._errors():
            conn = await pool.acquire(timeout=self._timeout)
            try:
                async with conn.transaction():
                    yield conn
            finally:
                await pool.release(conn)

    async def _require(self, session_id: str) -> None:
        if not await self._fetch("SELECT 1 FROM sessions WHERE id = $1", session_id):
            raise session_not_found(session_id)

    # --- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Create the pool and apply pending migrations under an advisory
        lock. UnavailableError when the server cannot be reached."""
        if self._pool is not None:
            return
        try:
            with self._errors():
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                )
                async with self._pool.acquire() as conn:
                    await self._migrate(conn)
        except BaseException:
            await self.close()
            raise

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(SCHEMA_MIGRATIONS_TABLE)
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in pending(applied):
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    time.time(),
                )
                log.info(
                    "postgres store: applied migration %d (%s)", migration.version, migration.name
                )
            if applied and max(applied) > LATEST_VERSION:
                log.warning(
                    "postgres store: schema version %d is newer than this server's %d",
                    max(applied),
                    LATEST_VERSION,
                )

    async def close(self) -> None:
        """Close the pool (idempotent; waits for queries in flight up to the
        connect timeout, then terminates)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except _UNAVAILABLE:  # TimeoutError among them
            pool.terminate()

    # --- sessions ---------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        """Insert `record` with an empty history. AlreadyExistsError
        (reason SESSION_EXISTS) if its id is taken."""
        try:
            await self._fetch(
                f"INSERT INTO sessions ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES})",
                *record_params(record),
            )
        except asyncpg.UniqueViolationError as exc:
            raise session_exists(record.id) from exc

    async def get(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch(f"{_SELECT} WHERE id = $1", session_id)
        return record_from_row(rows[0]) if rows else None

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        rows = await self._fetch(
            f"{_SELECT} WHERE agent = $1 AND created_by = $2 AND state = 'open' "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            agent,
            created_by,
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
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        for column, value in (
            ("agent", agent),
            ("created_by", created_by),
            ("state", state.value if state else ""),
        ):
            if value:
                params.append(value)
                clauses.append(f"{column} = ${len(params)}")
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        n = len(params)
        rows = await self._fetch(
            f"{_SELECT}{where} ORDER BY updated_at DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
            *params,
            max(limit, 0),
            max(offset, 0),
        )
        return [record_from_row(row) for row in rows]

    async def delete(self, session_id: str) -> None:
        """Delete the session and its runs' events; its transcript and runs
        go with it (ON DELETE CASCADE)."""
        rows = await self._fetch(
            "WITH events AS (DELETE FROM run_events WHERE run_id IN "
            "(SELECT id FROM runs WHERE session_id = $1)), "
            "hooks AS (DELETE FROM hook_state WHERE scope = $2) "
            "DELETE FROM sessions WHERE id = $1 RETURNING 1",
            session_id,
            session_scope(session_id),
        )
        if not rows:
            raise session_not_found(session_id)

    # --- history ----------------------------------------------------------

    async def _items_from(self, session_id: str, *, visible: bool) -> builtins.list[asyncpg.Record]:
        start = "s.history_seq" if visible else "0"
        rows = await self._fetch(
            f"SELECT {_ITEM_COLUMNS} FROM sessions s "
            f"LEFT JOIN transcript_items i ON i.session_id = s.id AND i.seq >= {start} "
            "AND i.seq < s.next_seq "
            "WHERE s.id = $1 ORDER BY i.seq",
            session_id,
        )
        if not rows:
            raise session_not_found(session_id)
        if rows[0][0] is None:
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
        # The history is the contiguous seq range [history_seq, next_seq).
        if newest_first:
            where = (
                "i.seq >= s.history_seq "
                "AND i.seq > s.next_seq - 1 - $2 - $3 AND i.seq <= s.next_seq - 1 - $2"
            )
        else:
            where = "i.seq >= s.history_seq + $2 AND i.seq < s.history_seq + $2 + $3"
        return await self._page(
            where, newest_first, session_id, offset, limit, max_bytes, decode_visible
        )

    async def transcript(self, session_id: str) -> builtins.list[TranscriptItem]:
        return decode_rows(await self._items_from(session_id, visible=False), decode_item)

    async def transcript_page(
        self, session_id: str, offset: int, limit: int, *, max_bytes: int = 0
    ) -> builtins.list[TranscriptItem]:
        where = "i.seq >= $2 AND i.seq < $2 + $3 AND i.seq < s.next_seq"
        return await self._page(where, False, session_id, offset, limit, max_bytes, decode_item)

    async def _page(
        self,
        where: str,
        descending: bool,
        session_id: str,
        offset: int,
        limit: int,
        max_bytes: int,
        decode: Callable[..., _T],
    ) -> builtins.list[_T]:
        """The session's items in the `where` range ($2 offset, $3 limit),
        by seq; with `max_bytes` > 0 ($4), only those that fit in it (at
        least one): a window sum of their sizes, computed without reading
        the text itself (`octet_length` reads TOAST headers), picks them."""
        order = "i.seq DESC" if descending else "i.seq"
        args: builtins.list[Any] = [session_id, max(offset, 0), max(limit, 0)]
        items = (
            "FROM sessions s JOIN transcript_items i ON i.session_id = s.id "
            f"AND {where} WHERE s.id = $1"
        )
        if max_bytes <= 0:
            sql = f"SELECT {_ITEM_COLUMNS} {items} ORDER BY {order}"
        else:
            args.append(max_bytes)
            sql = (
                f"WITH page AS (SELECT i.seq, SUM({_STORED_SIZE}) OVER w AS running, "
                f"row_number() OVER w AS n {items} WINDOW w AS (ORDER BY {order})) "
                f"SELECT {_ITEM_COLUMNS} FROM page "
                "JOIN transcript_items i ON i.session_id = $1 AND i.seq = page.seq "
                f"WHERE page.running <= $4 OR page.n = 1 ORDER BY {order}"
            )
        rows = await self._fetch(sql, *args)
        if not rows:
            await self._require(session_id)
        return decode_rows(rows, decode)

    #: Full-text search (see `postgres_search`).
    search_sessions = postgres_search.search_sessions

    # --- metadata ---------------------------------------------------------

    async def compact(self, session_id: str, summary: str, now: float) -> SessionRecord:
        marker = encode_item(CompactMarker(summary, now))
        rows = await self._fetch(_COMPACT, session_id, now, marker[2], marker[6])
        if not rows:
            raise session_not_found(session_id)
        return record_from_row(rows[0])

    async def _update(self, session_id: str, assignments: str, *params: Any) -> SessionRecord:
        rows = await self._fetch(
            f"UPDATE sessions SET {assignments} WHERE id = $1 {_RETURNING}", session_id, *params
        )
        if not rows:
            raise session_not_found(session_id)
        return record_from_row(rows[0])

    async def set_state(self, session_id: str, state: SessionState, now: float) -> SessionRecord:
        return await self._update(session_id, "state = $2, updated_at = $3", state.value, now)

    async def set_title(self, session_id: str, title: str, now: float) -> SessionRecord:
        return await self._update(session_id, "title = $2", title)

    async def add_approved_tool(self, session_id: str, tool: str) -> SessionRecord:
        return await self._update(
            session_id,
            "always_approved_tools = CASE WHEN always_approved_tools ? $2 "
            "THEN always_approved_tools ELSE always_approved_tools || jsonb_build_array($2::text) END",
            tool,
        )

    async def import_session(self, record: SessionRecord, items: builtins.list[TranscriptItem]) -> None:
        """Insert `record` (message_count recomputed from `items`) and its
        transcript in one statement. AlreadyExistsError if the id is taken;
        nothing is written then."""
        params = list(record_params(record))
        params[7] = len(visible_history(items))
        history_seq = max(
            (i for i, item in enumerate(items) if isinstance(item, CompactMarker)), default=0
        )
        try:
            await self._fetch(_IMPORT, *params, len(items), history_seq, *item_arrays(items))
        except asyncpg.UniqueViolationError as exc:
            raise session_exists(record.id) from exc
