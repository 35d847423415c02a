"""The run half of the SQLite store: the run lease, checkpoints, run
records and the durable event log (semantics: `base.SessionStore`).

Every write is one `BEGIN IMMEDIATE` transaction run whole in the writer
thread (`sqlite_base`), so it is atomic, costs one hop from the event loop,
and is serialised against every other writer, this process's and other
processes' on the same file. The lease check is the conditional UPDATE of
the session row (`active_run_id = run_id`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from pilothouse.errors import (
    lease_lost,
    run_active,
    run_exists,
    run_not_found,
    session_closed,
    session_not_found,
)
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store.base import (
    INTERRUPTED,
    Checkpoint,
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionState,
    StoredEvent,
)
from pilothouse.runtime.store.codec import (
    ITEM_COLUMNS,
    RECORD_COLUMNS,
    checkpoint_items,
    encode_item,
    encode_usage,
    record_from_row,
)
from pilothouse.runtime.store.feed import SQLITE_BUMP, SQLITE_INSERT_EVENT
from pilothouse.runtime.store.runcodec import (
    LAST_SEQUENCE,
    RUN_COLUMN_COUNT,
    RUN_COLUMNS,
    dumps,
    event_from_row,
    event_params,
    has_update,
    key_column,
    run_from_row,
    run_params,
    update_assignments,
    update_params,
)
from pilothouse.runtime.store.sqlite_base import SqliteBase

INSERT_ITEM = (
    f"INSERT INTO transcript_items (session_id, seq, {', '.join(ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(ITEM_COLUMNS) + 1))}, ?)"
)
_INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * RUN_COLUMN_COUNT)})"
_SELECT_RUN = f"SELECT {RUN_COLUMNS}, {LAST_SEQUENCE} FROM runs"
_ACTIVE = f"('{RunStatus.RUNNING.value}', '{RunStatus.WAITING_FOR_DECISION.value}')"
_UPDATE_RUN = f"UPDATE runs SET {update_assignments(['?'] * 7)} WHERE id = ?"
_ENDED = f"('{RunStatus.FINISHED.value}', '{RunStatus.INTERRUPTED.value}')"
_IN_JSON = "IN (SELECT value FROM json_each(?))"

#: What `begin_run` reads first: the session, its active run's status, and
#: the runs that the new one would clash with.
_BEGIN_READ = """
SELECT s.state, s.active_run_id, s.lease_until, a.status,
    (SELECT session_id FROM runs WHERE id = :run),
    (SELECT id FROM runs WHERE :key <> '' AND session_id = :id AND idempotency_key = :key)
FROM sessions s LEFT JOIN runs a ON s.active_run_id <> '' AND a.id = s.active_run_id
WHERE s.id = :id
"""

#: Takes the lease (taking over an expired one when :takeover) and counts
#: the appended messages.
_BEGIN_SESSION = f"""
UPDATE sessions SET
    last_run_id = CASE WHEN :takeover THEN active_run_id ELSE last_run_id END,
    last_run_stop_reason = CASE WHEN :takeover THEN '{INTERRUPTED}' ELSE last_run_stop_reason END,
    active_run_id = :run, lease_until = :until,
    message_count = message_count + :n, next_seq = next_seq + :n,
    updated_at = CASE WHEN :n > 0 THEN :now ELSE updated_at END
WHERE id = :id
RETURNING {RECORD_COLUMNS}, next_seq
"""

#: The session side of a checkpoint; `active_run_id = :run` is the lease check.
_CHECKPOINT_SESSION = f"""
UPDATE sessions SET
    message_count = CASE WHEN :compact THEN 1 + :after ELSE message_count + :n END,
    history_seq = CASE WHEN :compact THEN next_seq + :before ELSE history_seq END,
    next_seq = next_seq + :n,
    updated_at = CASE WHEN :n > 0 OR :final THEN :now ELSE updated_at END,
    uptime_s = uptime_s + :uptime,
    last_run_id = CASE WHEN :final THEN :run ELSE last_run_id END,
    last_run_stop_reason = CASE WHEN :final
        THEN COALESCE(:stop, (SELECT stop_reason FROM runs WHERE id = :run), '')
        ELSE last_run_stop_reason END,
    last_run_usage = CASE WHEN :final
        THEN COALESCE(:usage, (SELECT usage FROM runs WHERE id = :run), '{{}}')
        ELSE last_run_usage END,
    active_run_id = CASE WHEN :final THEN '' ELSE active_run_id END,
    lease_until = CASE WHEN :final OR :release THEN 0 ELSE lease_until END
WHERE id = :id AND active_run_id = :run
    AND (:owner = '' OR EXISTS (SELECT 1 FROM runs WHERE id = :run AND owner = :owner))
RETURNING {RECORD_COLUMNS}, next_seq
"""

#: Sessions whose active run `claim_runs` takes: an expired (or released)
#: lease, or an active run of the stale owner.
_CLAIMABLE = f"""
SELECT s.id, s.active_run_id, a.status
FROM sessions s LEFT JOIN runs a ON a.id = s.active_run_id
WHERE s.active_run_id <> '' AND s.lease_until <= :now
UNION
SELECT s.id, s.active_run_id, a.status
FROM runs a JOIN sessions s ON s.id = a.session_id AND s.active_run_id = a.id
WHERE :stale <> '' AND a.owner = :stale AND a.status IN {_ACTIVE}
"""


def _encoded(messages: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [encode_item(m) for m in messages]


def _append_items(
    conn: sqlite3.Connection, session_id: str, next_seq: int, encoded: list[tuple[Any, ...]]
) -> None:
    """Insert `encoded` items as the last ones before `next_seq`."""
    if encoded:
        first = next_seq - len(encoded)
        conn.executemany(
            INSERT_ITEM, [(session_id, first + i, *item) for i, item in enumerate(encoded)]
        )


def _ended(status: str) -> bool:
    return RunStatus(status).ended


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Append events (skipping those stored already), stamped with this
    transaction's feed number (see `feed`)."""
    conn.execute(SQLITE_BUMP)
    conn.executemany(SQLITE_INSERT_EVENT, rows)


class SqliteRuns(SqliteBase):
    """The `SessionStore` run methods of `SqliteSessionStore`."""

    async def insert_run(self, record: RunRecord) -> None:
        params = run_params(record)

        def insert(conn: sqlite3.Connection) -> None:
            exists, run_session, key_run = conn.execute(
                "SELECT (SELECT 1 FROM sessions WHERE id = :id), "
                "(SELECT session_id FROM runs WHERE id = :run), "
                "(SELECT id FROM runs WHERE :key <> '' AND session_id = :id "
                "AND idempotency_key = :key)",
                {"id": record.session_id, "run": record.id, "key": params[9]},
            ).fetchone()
            if not exists:
                raise session_not_found(record.session_id)
            if key_run is not None:
                raise run_exists(record.session_id, key_run)
            if run_session is not None:
                raise run_exists(run_session, record.id)
            conn.execute(_INSERT_RUN, params)

        await self._transaction(insert, inline=True)

    async def begin_run(
        self,
        session_id: str,
        run_id: str,
        *,
        lease_s: float,
        now: float,
        messages: Sequence[Message] = (),
        new_run: RunRecord | None = None,
        events: Sequence[StoredEvent] = (),
    ) -> SessionRecord:
        """One transaction: read the session, its active run and any clash,
        then write the run, the session row, the messages and the events."""
        encoded = _encoded(messages)  # before the transaction: may raise
        event_rows = [event_params(e) for e in events]
        run_row = None
        if new_run is not None:
            started = dataclasses.replace(new_run, status=RunStatus.RUNNING, started_at=now)
            run_row = run_params(started)
        key = run_row[9] if run_row is not None else ""

        def begin(conn: sqlite3.Connection) -> Any:
            row = conn.execute(_BEGIN_READ, {"id": session_id, "run": run_id, "key": key}).fetchone()
            if row is None:
                raise session_not_found(session_id)
            state, active, lease_until, active_status, run_session, key_run = row
            if state == SessionState.CLOSED.value:
                raise session_closed(session_id)
            if run_row is not None:
                if key_run is not None:
                    raise run_exists(session_id, key_run)
                if run_session is not None:
                    raise run_exists(run_session, run_id)
            elif run_session != session_id:
                raise run_not_found(session_id, run_id)
            takeover = False
            if active and active != run_id:
                expired = lease_until <= now
                if not expired or (active_status is not None and not _ended(active_status)):
                    raise run_active(session_id, active, lease_expired=expired)
                takeover = True
            if run_row is not None:
                conn.execute(_INSERT_RUN, run_row)
            elif run_session == session_id:
                conn.execute(
                    "UPDATE runs SET status = ?, started_at = ? WHERE id = ?",
                    (RunStatus.RUNNING.value, now, run_id),
                )
            session = conn.execute(
                _BEGIN_SESSION,
                {
                    "id": session_id, "run": run_id, "until": now + lease_s, "now": now,
                    "n": len(encoded), "takeover": takeover,
                },
            ).fetchone()  # fmt: skip
            _append_items(conn, session_id, session[-1], encoded)
            if event_rows:
                _insert_events(conn, event_rows)
            return session

        return record_from_row(await self._transaction(begin, inline=True))

    async def renew_run(
        self, session_id: str, run_id: str, *, lease_s: float, now: float, owner: str = ""
    ) -> bool:
        rows = await self._write(
            "UPDATE sessions SET lease_until = ? WHERE id = ? AND active_run_id = ? "
            "AND (? = '' OR EXISTS (SELECT 1 FROM runs WHERE id = ? AND owner = ?)) RETURNING 1",
            (now + lease_s, session_id, run_id, owner, run_id, owner), inline=True,
        )
        if rows:
            return True
        await self._require(session_id)
        return False

    async def checkpoint(
        self, session_id: str, run_id: str, checkpoint: Checkpoint
    ) -> SessionRecord:
        """One transaction: the session row (lease check, counters, last-run
        fields), then the transcript items, the events and the run record."""
        items, compact = checkpoint_items(checkpoint)
        encoded = _encoded(items)  # before the transaction: may raise
        event_rows = [event_params(e) for e in checkpoint.events]
        update = checkpoint.run
        run_update = (*update_params(update), run_id) if has_update(update) else None
        final = checkpoint.final
        params = {
            "id": session_id, "run": run_id, "compact": compact, "n": len(items),
            "after": len(checkpoint.messages), "before": len(checkpoint.messages_before_compact),
            "now": checkpoint.now, "final": final, "release": checkpoint.release,
            "uptime": checkpoint.uptime_s if final else 0.0,
            "stop": update.stop_reason,
            "usage": encode_usage(update.usage) if update.usage is not None else None,
            "owner": checkpoint.owner,
        }  # fmt: skip

        def write(conn: sqlite3.Connection) -> Any:
            row = conn.execute(_CHECKPOINT_SESSION, params).fetchone()
            if row is None:
                exists = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,))
                raise lease_lost(session_id, run_id) if exists.fetchone() else session_not_found(
                    session_id
                )
            _append_items(conn, session_id, row[-1], encoded)
            if event_rows:
                _insert_events(conn, event_rows)
            if run_update is not None:
                conn.execute(_UPDATE_RUN, run_update)
            return row

        return record_from_row(await self._transaction(write, inline=True))

    async def claim_runs(
        self, owner: str, *, now: float, lease_s: float, stale_owner: str = ""
    ) -> list[RunRecord]:
        """One transaction: find the claimable sessions, renew their leases
        for `owner` (or mark them interrupted when their active run has no
        live record), hand their active and queued runs to `owner`, and read
        the records back."""

        def claim(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(_CLAIMABLE, {"now": now, "stale": stale_owner}).fetchall()
            claimed = [(s, a) for s, a, status in rows if status is not None and not _ended(status)]
            lost = [s for s, _, status in rows if status is None or _ended(status)]
            if lost:
                conn.execute(
                    "UPDATE sessions SET last_run_id = active_run_id, "
                    f"last_run_stop_reason = '{INTERRUPTED}', active_run_id = '', lease_until = 0 "
                    f"WHERE id {_IN_JSON}",
                    (dumps(lost),),
                )
            if not claimed:
                return []
            sessions = dumps([s for s, _ in claimed])
            active = dumps([a for _, a in claimed])
            conn.execute(
                f"UPDATE sessions SET lease_until = ? WHERE id {_IN_JSON}", (now + lease_s, sessions)
            )
            conn.execute(
                f"UPDATE runs SET owner = ?, attempt = attempt + 1 WHERE id {_IN_JSON}",
                (owner, active),
            )
            conn.execute(
                f"UPDATE runs SET owner = ? WHERE session_id {_IN_JSON} AND status = 'queued'",
                (owner, sessions),
            )
            records = conn.execute(
                f"{_SELECT_RUN} WHERE id {_IN_JSON} ORDER BY created_at, id", (active,)
            ).fetchall()
            queued = conn.execute(
                f"{_SELECT_RUN} WHERE session_id {_IN_JSON} AND status = 'queued' "
                "ORDER BY created_at, id",
                (sessions,),
            ).fetchall()
            return [*records, *queued]

        return [run_from_row(row) for row in await self._transaction(claim)]

    async def append_events(self, events: Sequence[StoredEvent]) -> None:
        if events:
            rows = [event_params(e) for e in events]
            await self._transaction(lambda conn: _insert_events(conn, rows), inline=True)

    async def list_events(self, run_id: str, after_sequence: int, limit: int) -> list[StoredEvent]:
        rows = await self._read(
            "SELECT run_id, sequence, time, kind, payload FROM run_events "
            "WHERE run_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (run_id, after_sequence, max(limit, 0)),
        )
        return [event_from_row(row) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(f"{_SELECT_RUN} WHERE id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def find_run(self, session_id: str, idempotency_key: str) -> RunRecord | None:
        if not idempotency_key:
            return None
        rows = await self._read(
            f"{_SELECT_RUN} WHERE session_id = ? AND idempotency_key = ? AND idempotency_key <> ''",
            (session_id, key_column(idempotency_key)),
        )
        return run_from_row(rows[0]) if rows else None

    async def latest_run(self, session_id: str) -> RunRecord | None:
        rows = await self._read(
            f"{_SELECT_RUN} WHERE session_id = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (session_id,),
        )
        return run_from_row(rows[0]) if rows else None

    async def list_runs(
        self,
        session_id: str,
        *,
        statuses: Collection[RunStatus] = (),
        before: tuple[float, str] | None = None,
        limit: int,
    ) -> list[RunRecord]:
        where: list[str] = ["session_id = ?"]
        params: list[object] = [session_id]
        if statuses:
            where.append(f"status {_IN_JSON}")
            params.append(dumps(sorted(RunStatus(s).value for s in statuses)))
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(before)
        rows = await self._read(
            f"{_SELECT_RUN} WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        if not rows:
            await self._require(session_id)
        return [run_from_row(row) for row in rows]

    async def prune_events(self, ended_before: float) -> int:
        """Prune in transactions of up to `PRUNE_BATCH` runs, so that other
        writers wait at most one batch; a pruned run is marked so that the
        next prune skips it."""

        def prune(conn: sqlite3.Connection) -> tuple[int, int]:
            rows = conn.execute(
                f"SELECT id FROM runs WHERE status IN {_ENDED} AND events_pruned = 0 "
                "AND ended_at < ? LIMIT ?",
                (ended_before, PRUNE_BATCH),
            ).fetchall()
            if not rows:
                return 0, 0
            ids = dumps([row[0] for row in rows])
            cursor = conn.execute(
                f"DELETE FROM run_events WHERE run_id {_IN_JSON} AND sequence < "
                "(SELECT MAX(e.sequence) FROM run_events e WHERE e.run_id = run_events.run_id)",
                (ids,),
            )
            conn.execute(f"UPDATE runs SET events_pruned = 1 WHERE id {_IN_JSON}", (ids,))
            return len(rows), max(cursor.rowcount, 0)

        deleted = 0
        while True:
            runs, events = await self._transaction(prune)
            deleted += events
            if runs < PRUNE_BATCH:
                return deleted

    async def end_queued_run(
        self, run_id: str, update: RunUpdate, events: Sequence[StoredEvent] = ()
    ) -> bool:
        params = (*update_params(update), run_id)
        event_rows = [event_params(e) for e in events]

        def end(conn: sqlite3.Connection) -> bool:
            if conn.execute(f"{_UPDATE_RUN} AND status = 'queued'", params).rowcount != 1:
                return False
            if event_rows:
                _insert_events(conn, event_rows)
            return True

        return await self._transaction(end, inline=True)


#: Runs whose events one `prune_events` transaction deletes.
PRUNE_BATCH = 500
