"""The run half of the SQLite store: the run lease, checkpoints, run
records and the durable event log (semantics: `base.SessionStore`).

Every write is one `BEGIN IMMEDIATE` transaction of the store's writer
connection, so it is atomic and serialised against every other writer,
this process's and other processes' on the same file. The lease check is
the conditional UPDATE of the session row (`active_run_id = run_id`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import aiosqlite

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
    RunOutcome,
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
from pilothouse.runtime.store.runcodec import (
    LAST_SEQUENCE,
    LEGACY_RUNS,
    RUN_COLUMN_COUNT,
    RUN_COLUMNS,
    dumps,
    event_from_row,
    event_params,
    has_update,
    key_column,
    legacy_checkpoint,
    run_from_row,
    run_params,
    update_assignments,
    update_params,
)

_INSERT_ITEM = (
    f"INSERT INTO transcript_items (session_id, seq, {', '.join(ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(ITEM_COLUMNS) + 1))}, ?)"
)
_INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * RUN_COLUMN_COUNT)})"
_INSERT_EVENT = (
    "INSERT INTO run_events (run_id, sequence, time, kind, payload) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
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


class _Connected(Protocol):
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]: ...

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]: ...

    async def _write(self, sql: str, params: tuple[Any, ...]) -> list[Any]: ...

    async def _require(self, session_id: str) -> None: ...


def _encoded(messages: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [encode_item(m) for m in messages]


async def _append_items(
    conn: aiosqlite.Connection, session_id: str, next_seq: int, encoded: list[tuple[Any, ...]]
) -> None:
    """Insert `encoded` items as the last ones before `next_seq`."""
    if encoded:
        first = next_seq - len(encoded)
        await conn.executemany(
            _INSERT_ITEM, [(session_id, first + i, *item) for i, item in enumerate(encoded)]
        )


class SqliteRuns:
    """The `SessionStore` run methods of `SqliteSessionStore`."""

    async def insert_run(self: _Connected, record: RunRecord) -> None:
        params = run_params(record)
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                "SELECT (SELECT 1 FROM sessions WHERE id = :id), "
                "(SELECT session_id FROM runs WHERE id = :run), "
                "(SELECT id FROM runs WHERE :key <> '' AND session_id = :id "
                "AND idempotency_key = :key)",
                {"id": record.session_id, "run": record.id, "key": params[9]},
            )
            exists, run_session, key_run = rows[0]
            if not exists:
                raise session_not_found(record.session_id)
            if key_run is not None:
                raise run_exists(record.session_id, key_run)
            if run_session is not None:
                raise run_exists(run_session, record.id)
            await conn.execute(_INSERT_RUN, params)

    async def begin_run(
        self: _Connected,
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
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                _BEGIN_READ, {"id": session_id, "run": run_id, "key": key}
            )
            if not rows:
                raise session_not_found(session_id)
            state, active, lease_until, active_status, run_session, key_run = rows[0]
            if state == SessionState.CLOSED.value:
                raise session_closed(session_id)
            if run_row is not None:
                if run_session is not None or key_run is not None:
                    if key_run is not None:
                        raise run_exists(session_id, key_run)
                    raise run_exists(run_session, run_id)
            elif run_session != session_id and not LEGACY_RUNS:
                raise run_not_found(session_id, run_id)
            takeover = False
            if active and active != run_id:
                expired = lease_until <= now
                if not expired or (active_status is not None and not _ended(active_status)):
                    raise run_active(session_id, active, lease_expired=expired)
                takeover = True
            if run_row is not None:
                await conn.execute(_INSERT_RUN, run_row)
            elif run_session == session_id:
                await conn.execute(
                    "UPDATE runs SET status = ?, started_at = ? WHERE id = ?",
                    (RunStatus.RUNNING.value, now, run_id),
                )
            session = await conn.execute_fetchall(
                _BEGIN_SESSION,
                {
                    "id": session_id, "run": run_id, "until": now + lease_s, "now": now,
                    "n": len(encoded), "takeover": takeover,
                },
            )  # fmt: skip
            await _append_items(conn, session_id, session[0][-1], encoded)
            if event_rows:
                await conn.executemany(_INSERT_EVENT, event_rows)
        return record_from_row(session[0])

    async def renew_run(
        self: _Connected, session_id: str, run_id: str, *, lease_s: float, now: float
    ) -> bool:
        rows = await self._write(
            "UPDATE sessions SET lease_until = ? WHERE id = ? AND active_run_id = ? RETURNING 1",
            (now + lease_s, session_id, run_id),
        )
        if rows:
            return True
        await self._require(session_id)
        return False

    async def checkpoint(
        self: _Connected, session_id: str, run_id: str, checkpoint: Checkpoint
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
        }  # fmt: skip
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(_CHECKPOINT_SESSION, params)
            if not rows:
                exists = await conn.execute_fetchall(
                    "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
                )
                raise lease_lost(session_id, run_id) if exists else session_not_found(session_id)
            await _append_items(conn, session_id, rows[0][-1], encoded)
            if event_rows:
                await conn.executemany(_INSERT_EVENT, event_rows)
            if run_update is not None:
                await conn.execute(_UPDATE_RUN, run_update)
        return record_from_row(rows[0])

    async def claim_runs(
        self: _Connected, owner: str, *, now: float, lease_s: float, stale_owner: str = ""
    ) -> list[RunRecord]:
        """One transaction: find the claimable sessions, renew their leases
        for `owner` (or mark them interrupted when their active run has no
        live record), hand their active and queued runs to `owner`, and read
        the records back."""
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(_CLAIMABLE, {"now": now, "stale": stale_owner})
            if not rows:
                return []
            claimed = [(s, a) for s, a, status in rows if status is not None and not _ended(status)]
            lost = [s for s, _, status in rows if status is None or _ended(status)]
            sessions = dumps([s for s, _ in claimed])
            active = dumps([a for _, a in claimed])
            if claimed:
                await conn.execute(
                    f"UPDATE sessions SET lease_until = ? WHERE id {_IN_JSON}", (now + lease_s, sessions)
                )
                await conn.execute(
                    f"UPDATE runs SET owner = ?, attempt = attempt + 1 WHERE id {_IN_JSON}",
                    (owner, active),
                )
            if lost:
                await conn.execute(
                    "UPDATE sessions SET last_run_id = active_run_id, "
                    f"last_run_stop_reason = '{INTERRUPTED}', active_run_id = '', lease_until = 0 "
                    f"WHERE id {_IN_JSON}",
                    (dumps(lost),),
                )
            if not claimed:
                return []
            await conn.execute(
                f"UPDATE runs SET owner = ? WHERE session_id {_IN_JSON} AND status = 'queued'",
                (owner, sessions),
            )
            records = await conn.execute_fetchall(
                f"{_SELECT_RUN} WHERE id {_IN_JSON} ORDER BY created_at, id", (active,)
            )
            queued = await conn.execute_fetchall(
                f"{_SELECT_RUN} WHERE session_id {_IN_JSON} AND status = 'queued' "
                "ORDER BY created_at, id",
                (sessions,),
            )
        return [run_from_row(row) for row in (*records, *queued)]

    async def append_events(self: _Connected, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        rows = [event_params(e) for e in events]
        async with self._transaction() as conn:
            await conn.executemany(_INSERT_EVENT, rows)

    async def list_events(
        self: _Connected, run_id: str, after_sequence: int, limit: int
    ) -> list[StoredEvent]:
        rows = await self._read(
            "SELECT run_id, sequence, time, kind, payload FROM run_events "
            "WHERE run_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (run_id, after_sequence, max(limit, 0)),
        )
        return [event_from_row(row) for row in rows]

    async def get_run(self: _Connected, run_id: str) -> RunRecord | None:
        rows = await self._read(f"{_SELECT_RUN} WHERE id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def find_run(self: _Connected, session_id: str, idempotency_key: str) -> RunRecord | None:
        if not idempotency_key:
            return None
        rows = await self._read(
            f"{_SELECT_RUN} WHERE session_id = ? AND idempotency_key = ? AND idempotency_key <> ''",
            (session_id, key_column(idempotency_key)),
        )
        return run_from_row(rows[0]) if rows else None

    async def latest_run(self: _Connected, session_id: str) -> RunRecord | None:
        rows = await self._read(
            f"{_SELECT_RUN} WHERE session_id = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (session_id,),
        )
        return run_from_row(rows[0]) if rows else None

    async def list_runs(
        self: _Connected,
        session_id: str,
        *,
        statuses: Collection[RunStatus] = (),
        before: tuple[float, str] | None = None,
        limit: int,
    ) -> list[RunRecord]:
        where, params = ["session_id = ?"], [session_id]
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

    async def prune_events(self: _Connected, ended_before: float) -> int:
        """Prune in transactions of up to `PRUNE_BATCH` runs, so that other
        writers wait at most one batch; a pruned run is marked so that the
        next prune skips it."""
        deleted = 0
        while True:
            async with self._transaction() as conn:
                rows = await conn.execute_fetchall(
                    f"SELECT id FROM runs WHERE status IN {_ENDED} AND events_pruned = 0 "
                    "AND ended_at < ? LIMIT ?",
                    (ended_before, PRUNE_BATCH),
                )
                if not rows:
                    return deleted
                ids = dumps([row[0] for row in rows])
                cursor = await conn.execute(
                    f"DELETE FROM run_events WHERE run_id {_IN_JSON} AND sequence < "
                    "(SELECT MAX(e.sequence) FROM run_events e WHERE e.run_id = run_events.run_id)",
                    (ids,),
                )
                deleted += max(cursor.rowcount, 0)
                await conn.execute(f"UPDATE runs SET events_pruned = 1 WHERE id {_IN_JSON}", (ids,))
            if len(rows) < PRUNE_BATCH:
                return deleted

    async def end_queued_run(
        self: _Connected, run_id: str, update: RunUpdate, events: Sequence[StoredEvent] = ()
    ) -> bool:
        params = (*update_params(update), run_id)
        event_rows = [event_params(e) for e in events]
        async with self._transaction() as conn:
            cursor = await conn.execute(f"{_UPDATE_RUN} AND status = 'queued'", params)
            if cursor.rowcount != 1:
                return False
            if event_rows:
                await conn.executemany(_INSERT_EVENT, event_rows)
        return True

    # --- Transitional: the run API before durable runs (removed with it) ---

    async def finish_run(self, session_id: str, run_id: str, outcome: RunOutcome) -> SessionRecord:
        return await self.checkpoint(  # type: ignore[attr-defined]
            session_id, run_id, legacy_checkpoint(outcome)
        )

    async def abandon_run(
        self: _Connected, session_id: str, run_id: str, stop_reason: str, now: float
    ) -> None:
        rows = await self._write(
            "UPDATE sessions SET active_run_id = '', lease_until = 0, last_run_id = ?, "
            "last_run_stop_reason = ?, updated_at = ? WHERE id = ? AND active_run_id = ? "
            "RETURNING 1",
            (run_id, stop_reason, now, session_id, run_id),
        )
        if not rows:
            await self._require(session_id)

    async def recover_interrupted(self: _Connected, now: float) -> list[str]:
        rows = await self._write(
            f"UPDATE sessions SET last_run_id = active_run_id, "
            f"last_run_stop_reason = '{INTERRUPTED}', active_run_id = '', lease_until = 0 "
            "WHERE active_run_id <> '' AND lease_until <= ? RETURNING id",
            (now,),
        )
        return [row[0] for row in rows]

    async def set_run_owner(self: _Connected, session_id: str, run_id: str, owner: str) -> None:
        await self._write(
            "INSERT INTO run_owners (session_id, run_id, owner) VALUES (?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET run_id = excluded.run_id, owner = excluded.owner",
            (session_id, run_id, owner),
        )

    async def get_run_owner(self: _Connected, session_id: str) -> tuple[str, str] | None:
        rows = await self._read(
            "SELECT run_id, owner FROM run_owners WHERE session_id = ?", (session_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None


#: Runs whose events one `prune_events` transaction deletes.
PRUNE_BATCH = 500


def _ended(status: str) -> bool:
    return RunStatus(status).ended

