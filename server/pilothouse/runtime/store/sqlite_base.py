"""The SQLite store's connections: one writer, one reader, one file.

WAL journal with `synchronous=NORMAL` (a commit is durable against a
process crash at once and against power loss at the next checkpoint).

Writes go through ONE plain `sqlite3` connection owned by a dedicated
thread: a whole transaction (`BEGIN IMMEDIATE` … `COMMIT`, or ROLLBACK when
its body raises) runs there as one function, so it costs one hop between
the event loop and the thread whatever its number of statements, and the
thread's queue serialises the transactions. A caller cancelled while its
transaction runs does not stop it: the transaction commits or rolls back
whole, and the cancelled call returns once it has.

A hop to that thread costs about 100 µs of CPU (submit, wake-up, the
result handed back), five times a small commit itself. So the small
writes every run makes (begin, lease renewal, checkpoints, event log
batches, a new session) ask for `inline=True`: when no transaction is
queued for the thread, they run on the event loop's thread at once, with
no busy wait (busy_timeout 0). One that finds the file locked by another
process (another worker or replica) is rolled back and goes to the thread,
which waits up to `busy_timeout_s` as every thread job does. Inline
commits never checkpoint the WAL themselves (a checkpoint syncs the file):
every `CHECKPOINT_EVERY` writes a passive checkpoint is queued for the
thread, which also checkpoints automatically at its own commits.

Reads go through a read-only aiosqlite connection, so they never wait
behind a write and always see committed data only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from pilothouse.errors import UnavailableError, session_not_found
from pilothouse.runtime.store.codec import stored_size
from pilothouse.runtime.store.migrations import LATEST_VERSION, SCHEMA_MIGRATIONS_TABLE, pending

log = logging.getLogger(__name__)

#: Page size of new database files, bytes.
PAGE_SIZE = 8192
#: Writes between two WAL checkpoints queued for the writer thread (inline
#: commits do not checkpoint; see the module docstring).
CHECKPOINT_EVERY = 200
#: SQLite's result codes of a write that found the database locked.
_LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

_T = TypeVar("_T")


def _unavailable(path: Path, exc: BaseException) -> UnavailableError:
    return UnavailableError(
        f"session store {str(path)!r} is unavailable: {exc}",
        reason="STORE_UNAVAILABLE",
        metadata={"store": "sqlite", "path": str(path)},
    )


class SqliteBase:
    """Connections, transactions and migrations of `SqliteSessionStore`
    (see the module docstring)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._writer: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        # Thread jobs submitted and not yet finished (read on the loop's
        # thread only: an inline write runs only when it is 0).
        self._queued = 0
        self._writes = 0
        self._checkpoints: set[asyncio.Future[Any]] = set()

    # --- errors -----------------------------------------------------------

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

    def _not_open(self) -> UnavailableError:
        return _unavailable(self.path, RuntimeError("the store is not open"))

    # --- writes -----------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, inline: bool = False) -> _T:
        """`fn(writer)`: on the loop's thread when `inline`, nothing is
        queued for the writer thread and the file is not locked by another
        process; else in the writer's thread."""
        if self._thread is None:
            raise self._not_open()
        self._writes += 1
        if self._writes % CHECKPOINT_EVERY == 0:
            self._queue_checkpoint()
        if inline and self._queued == 0 and self._writer is not None:
            try:
                with self._errors():
                    return fn(self._writer)
            except UnavailableError as exc:
                cause = exc.__cause__
                if getattr(cause, "sqlite_errorcode", None) not in _LOCKED:
                    raise
                # Locked by another process: nothing was written (a
                # transaction rolls back); wait in the thread instead.
        job = self._submit(fn)
        try:
            with self._errors():
                return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            # A job not started yet never runs; a running one is waited for,
            # so that when a cancelled call returns its write is settled
            # (committed whole or not at all) and a read sees which.
            if not job.cancel():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(job)
            raise

    def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> concurrent.futures.Future[_T]:
        """Queue `fn(writer)` for the writer thread, counted in `_queued`
        until it has finished (or was cancelled before it started)."""
        thread = self._thread
        if thread is None:
            raise self._not_open()
        loop = asyncio.get_running_loop()
        try:
            job = thread.submit(self._call, fn)
        except RuntimeError as exc:  # the thread was shut down by close()
            raise _unavailable(self.path, exc) from exc
        self._queued += 1

        def finished(_: concurrent.futures.Future[_T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._dequeue)

        job.add_done_callback(finished)
        return job

    def _dequeue(self) -> None:
        self._queued -= 1

    def _queue_checkpoint(self) -> None:
        """A passive WAL checkpoint in the writer thread; nothing waits for it."""
        with contextlib.suppress(UnavailableError):
            done = asyncio.wrap_future(self._submit(
                lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            ))
            self._checkpoints.add(done)
            done.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, done: asyncio.Future[Any]) -> None:
        self._checkpoints.discard(done)
        if not done.cancelled() and not isinstance(done.exception(), UnavailableError | None):
            log.warning("sqlite store %s: WAL checkpoint failed: %s", self.path, done.exception())

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        writer = self._writer
        if writer is None:  # closed while this call waited in the queue
            raise self._not_open()
        # In the thread a locked file is waited for and commits checkpoint
        # the WAL as SQLite does by default; inline writes do neither.
        writer.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        writer.execute("PRAGMA wal_autocheckpoint = 1000")
        try:
            return fn(writer)
        finally:
            with contextlib.suppress(sqlite3.Error):
                writer.execute("PRAGMA busy_timeout = 0")
                writer.execute("PRAGMA wal_autocheckpoint = 0")

    async def _transaction(
        self, body: Callable[[sqlite3.Connection], _T], *, inline: bool = False
    ) -> _T:
        """`body(writer)` in one write transaction (`BEGIN IMMEDIATE`):
        committed when it returns, rolled back when it raises. `inline`:
        see `_run` (small transactions only: it holds the loop)."""

        def transaction(conn: sqlite3.Connection) -> _T:
            if conn.in_transaction:  # defensive: left open by an earlier failure
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._run(transaction, inline=inline)

    async def _write(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any], *, inline: bool = False
    ) -> list[Any]:
        """One statement in autocommit mode (atomic by itself); its rows."""
        return await self._run(lambda conn: conn.execute(sql, params).fetchall(), inline=inline)

    # --- reads ------------------------------------------------------------

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise self._not_open()
        return self._reader

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]:
        conn = self._read_conn()
        with self._errors():
            return list(await conn.execute_fetchall(sql, params))

    async def _read_page(self, sql: str, params: dict[str, Any], max_bytes: int) -> list[Any]:
        """The transcript item rows of `sql`, only as many as fit in
        `max_bytes` of stored size (at least one) when it is > 0: read from
        one statement (one snapshot) in growing batches, so that rows past
        the budget are never read."""
        if max_bytes <= 0:
            return await self._read(sql, params)
        conn = self._read_conn()
        rows: list[Any] = []
        total, batch = 0, 8
        with self._errors():
            async with conn.execute(sql, params) as cursor:
                while True:
                    fetched = list(await cursor.fetchmany(batch))
                    for row in fetched:
                        total += stored_size(row)
                        if total > max_bytes and rows:
                            return rows
                        rows.append(row)
                    if len(fetched) < batch:
                        return rows
                    batch = min(batch * 2, 256)

    async def _require(self, session_id: str) -> None:
        if not await self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)):
            raise session_not_found(session_id)

    # --- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Open the file (creating it), switch it to WAL and apply pending
        migrations. UnavailableError when the file cannot be used."""
        if self._thread is not None:
            return
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "pilothouse-sqlite-writer")
        try:
            with self._errors():
                loop = asyncio.get_running_loop()
                self._writer = await loop.run_in_executor(self._thread, self._connect_writer)
                await self._transaction(self._migrate)
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                try:
                    await reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                    await reader.execute("PRAGMA query_only = ON")
                except BaseException:
                    await reader.close()
                    raise
                self._reader = reader
        except BaseException:
            await self.close()
            raise

    def _connect_writer(self) -> sqlite3.Connection:
        # Used from the writer thread and, inline, from the loop's thread,
        # never from both at once (see the module docstring).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            # Only takes effect on a new file: larger pages keep a session's
            # long messages inline in the b-tree.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("sqlite store %s: journal mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            # The busy timeout above covers opening beside another process;
            # from here on only thread jobs wait for a lock (see `_call`).
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(SCHEMA_MIGRATIONS_TABLE)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in pending(applied):
            for statement in migration.sqlite:
                conn.execute(statement)
            conn.execute(
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

    async def close(self) -> None:
        """Close both connections (idempotent); transactions already queued
        finish first."""
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await reader.close()
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def close_writer() -> None:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()

        with contextlib.suppress(sqlite3.Error):
            await asyncio.get_running_loop().run_in_executor(thread, close_writer)
        thread.shutdown(wait=False)
