"""The run half of the PostgreSQL store: the run lease, checkpoints, run
records and the durable event log (semantics: `base.SessionStore`).

Writes on the hot path are one statement each (data-modifying CTEs, arrays
through `unnest`), so they are atomic and cost one round trip: a
checkpoint updates the session row (its `active_run_id = run_id` condition
is the lease check, and the row lock orders it against every other write
to the session), appends the transcript items and events and updates the
run record together or not at all. `begin_run` and `claim_runs` decide
from what they read, so they run in a transaction that first locks the
session rows (`FOR NO KEY UPDATE`; `claim_runs` with `SKIP LOCKED`, so
replicas claiming at once split the sessions between them) and then reads
them again under the lock, with a fresh snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import asyncpg

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
    TranscriptItem,
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
    RUN_COLUMN_COUNT,
    RUN_COLUMNS,
    event_from_row,
    event_params,
    has_update,
    key_column,
    run_from_row,
    run_params,
    update_assignments,
    update_params,
)

# --- arrays for unnest ----------------------------------------------------------

ITEMS = ", ".join(ITEM_COLUMNS)
T_ITEMS = ", ".join(f"t.{c}" for c in ITEM_COLUMNS)
_ITEM_TYPES = ("text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "json[]", "float8[]")
_EVENT_TYPES = ("text[]", "int8[]", "float8[]", "text[]", "text[]")
_EVENTS = "run_id, sequence, time, kind, payload"


def _params(first: int, types: Sequence[str]) -> str:
    return ", ".join(f"${first + i}::{t}" for i, t in enumerate(types))


def unnest_items(first: int) -> str:
    """`unnest(...)` of the item columns passed as parameters `$first`..."""
    return f"unnest({_params(first, _ITEM_TYPES)}) WITH ORDINALITY AS t({ITEMS}, ord)"


def item_arrays(items: Sequence[TranscriptItem]) -> list[list[Any]]:
    """Transcript items as parallel arrays, one per `ITEM_COLUMNS`, for unnest."""
    return _arrays([encode_item(item) for item in items], len(ITEM_COLUMNS))


def _event_arrays(events: Sequence[StoredEvent]) -> list[list[Any]]:
    return _arrays([event_params(e) for e in events], 5)


def _arrays(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _insert_events(first: int, when: str = "") -> str:
    """An INSERT of the events passed as arrays `$first`..., skipping those
    stored already; `when` a condition on the whole insert."""
    where = f" WHERE {when}" if when else ""
    return (
        f"INSERT INTO run_events ({_EVENTS}) SELECT * FROM unnest({_params(first, _EVENT_TYPES)})"
        f"{where} ON CONFLICT DO NOTHING"
    )


# --- statements ---------------------------------------------------------------

_SELECT_RUN = f"SELECT {RUN_COLUMNS}, {LAST_SEQUENCE} FROM runs"
_RETURNING_RUN = f"RETURNING {RUN_COLUMNS}, {LAST_SEQUENCE}"
_ACTIVE = f"('{RunStatus.RUNNING.value}', '{RunStatus.WAITING_FOR_DECISION.value}')"
_ACTIVE_SET = frozenset((RunStatus.RUNNING.value, RunStatus.WAITING_FOR_DECISION.value))
_ENDED = f"('{RunStatus.FINISHED.value}', '{RunStatus.INTERRUPTED.value}')"
_RUN_VALUES = ", ".join(f"${7 + i}" for i in range(RUN_COLUMN_COUNT))
_JSON_RETURNING = RECORD_COLUMNS.replace(
    "always_approved_tools", "always_approved_tools::text"
).replace("last_run_usage", "last_run_usage::text")

_BEGIN_READ = """
SELECT s.state, s.active_run_id, s.lease_until, a.status,
    (SELECT session_id FROM runs WHERE id = $2),
    (SELECT id FROM runs WHERE $3 <> '' AND session_id = $1 AND idempotency_key = $3)
FROM sessions s LEFT JOIN runs a ON s.active_run_id <> '' AND a.id = s.active_run_id
WHERE s.id = $1
"""

_BEGIN_SESSION = f"""
s AS (
    UPDATE sessions SET
        last_run_id = CASE WHEN $6 THEN active_run_id ELSE last_run_id END,
        last_run_stop_reason = CASE WHEN $6 THEN '{INTERRUPTED}' ELSE last_run_stop_reason END,
        active_run_id = $2, lease_until = $3,
        message_count = message_count + $5, next_seq = next_seq + $5,
        updated_at = CASE WHEN $5 > 0 THEN $4 ELSE updated_at END
    WHERE id = $1
    RETURNING {_JSON_RETURNING}, next_seq - $5 AS first_seq
)"""


def _begin_statement(run_cte: str, first: int) -> str:
    return f"""
WITH r AS ({run_cte}), {_BEGIN_SESSION.strip()},
items AS (
    INSERT INTO transcript_items (session_id, seq, {ITEMS})
    SELECT s.id, s.first_seq + t.ord - 1, {T_ITEMS} FROM s, {unnest_items(first)}
), events AS ({_insert_events(first + len(_ITEM_TYPES))})
SELECT * FROM s
"""


#: begin_run inserting the new run (RUNNING) / starting the stored one.
_BEGIN_NEW = _begin_statement(
    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({_RUN_VALUES})", 7 + RUN_COLUMN_COUNT
)
_BEGIN_STORED = _begin_statement(
    f"UPDATE runs SET status = '{RunStatus.RUNNING.value}', started_at = $4 "
    "WHERE id = $2 AND session_id = $1",
    7,
)

_CHECKPOINT = f"""
WITH s AS (
    UPDATE sessions SET
        message_count = CASE WHEN $3 THEN 1 + $4 ELSE message_count + $5 END,
        history_seq = CASE WHEN $3 THEN next_seq + $6 ELSE history_seq END,
        next_seq = next_seq + $5,
        updated_at = CASE WHEN $5 > 0 OR $8 THEN $7 ELSE updated_at END,
        uptime_s = uptime_s + $10,
        last_run_id = CASE WHEN $8 THEN $2 ELSE last_run_id END,
        last_run_stop_reason = CASE WHEN $8
            THEN COALESCE($11, (SELECT stop_reason FROM runs WHERE id = $2), '')
            ELSE last_run_stop_reason END,
        last_run_usage = CASE WHEN $8
            THEN COALESCE($12::jsonb, (SELECT usage::jsonb FROM runs WHERE id = $2), '{{}}'::jsonb)
            ELSE last_run_usage END,
        active_run_id = CASE WHEN $8 THEN '' ELSE active_run_id END,
        lease_until = CASE WHEN $8 OR $9 THEN 0 ELSE lease_until END
    WHERE id = $1 AND active_run_id = $2
        AND ($34 = '' OR EXISTS (SELECT 1 FROM runs WHERE id = $2 AND owner = $34))
    RETURNING {_JSON_RETURNING}, next_seq - $5 AS first_seq
), items AS (
    INSERT INTO transcript_items (session_id, seq, {ITEMS})
    SELECT s.id, s.first_seq + t.ord - 1, {T_ITEMS} FROM s, {unnest_items(21)}
), events AS ({_insert_events(29, "EXISTS (SELECT 1 FROM s)")}
), run AS (
    UPDATE runs SET {update_assignments([f"${14 + i}" for i in range(7)], "::json")}
    WHERE id = $2 AND $13 AND EXISTS (SELECT 1 FROM s)
)
SELECT * FROM s
"""

_CLAIM = f"""
WITH renewed AS (
    UPDATE sessions SET lease_until = $2 WHERE id = ANY($3::text[])
), lost AS (
    UPDATE sessions SET last_run_id = active_run_id, last_run_stop_reason = '{INTERRUPTED}',
        active_run_id = '', lease_until = 0
    WHERE id = ANY($4::text[])
), active AS (
    UPDATE runs SET owner = $1, attempt = attempt + 1 WHERE id = ANY($5::text[])
    {_RETURNING_RUN}, 0 AS queued
), queued AS (
    UPDATE runs SET owner = $1 WHERE session_id = ANY($3::text[]) AND status = 'queued'
    {_RETURNING_RUN}, 1 AS queued
)
SELECT * FROM active UNION ALL SELECT * FROM queued ORDER BY queued, created_at, id
"""

_PRUNE = f"""
WITH p AS (
    SELECT id FROM runs WHERE status IN {_ENDED} AND events_pruned = 0 AND ended_at < $1
    LIMIT $2 FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE runs SET events_pruned = 1 WHERE id IN (SELECT id FROM p)
), deleted AS (
    DELETE FROM run_events e USING p
    WHERE e.run_id = p.id
        AND e.sequence < (SELECT MAX(x.sequence) FROM run_events x WHERE x.run_id = p.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM deleted)
"""

_END_QUEUED = f"""
WITH r AS (
    UPDATE runs SET {update_assignments([f"${1 + i}" for i in range(7)], "::json")}
    WHERE id = $8 AND status = 'queued' RETURNING id
), events AS ({_insert_events(9, "EXISTS (SELECT 1 FROM r)")})
SELECT count(*) FROM r
"""

_RUN_KEYS = ("runs_pkey", "runs_by_idempotency_key")

#: Runs whose events one `prune_events` statement deletes.
PRUNE_BATCH = 500


class _Connected(Protocol):
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def _require(self, session_id: str) -> None: ...


class PostgresRuns:
    """The `SessionStore` run methods of `PostgresSessionStore`."""

    async def _clash(self: _Connected, record: RunRecord, key: str) -> Exception:
        """RUN_EXISTS naming the run `record` clashes with (by key first)."""
        rows = await self._fetch(
            "SELECT session_id, id FROM runs WHERE id = $1 OR ($2 <> '' AND session_id = $3 "
            "AND idempotency_key = $2) ORDER BY id = $1 LIMIT 1",
            record.id, key, record.session_id,
        )  # fmt: skip
        return run_exists(*rows[0]) if rows else run_exists(record.session_id, record.id)

    async def insert_run(self: _Connected, record: RunRecord) -> None:
        params = run_params(record)
        placeholders = ", ".join(f"${i + 1}" for i in range(RUN_COLUMN_COUNT))
        try:
            rows = await self._fetch(
                f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({placeholders}) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                *params,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise session_not_found(record.session_id) from exc
        if not rows:
            raise await PostgresRuns._clash(self, record, params[9])  # type: ignore[arg-type]

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
        """A transaction: lock the session row, read it with its active
        run and any clash, then one statement writes the run, the session,
        the messages and the events."""
        items = item_arrays(messages)  # before the transaction: may raise
        event_arrays = _event_arrays(events)
        run_row: tuple[Any, ...] = ()
        if new_run is not None:
            run_row = run_params(dataclasses.replace(new_run, status=RunStatus.RUNNING, started_at=now))
        key = run_row[9] if run_row else ""
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    "SELECT 1 FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id
                )
                rows = await conn.fetch(_BEGIN_READ, session_id, run_id, key)
                if not rows:
                    raise session_not_found(session_id)
                state, active, lease_until, active_status, run_session, key_run = rows[0]
                if state == SessionState.CLOSED.value:
                    raise session_closed(session_id)
                if run_row:
                    if run_session is not None or key_run is not None:
                        if key_run is not None:
                            raise run_exists(session_id, key_run)
                        raise run_exists(run_session, run_id)
                elif run_session != session_id:
                    raise run_not_found(session_id, run_id)
                takeover = False
                if active and active != run_id:
                    expired = lease_until <= now
                    if not expired or (active_status is not None and not RunStatus(active_status).ended):
                        raise run_active(session_id, active, lease_expired=expired)
                    takeover = True
                head = (session_id, run_id, now + lease_s, now, len(messages), takeover)
                sql = _BEGIN_NEW if run_row else _BEGIN_STORED
                session = await conn.fetch(sql, *head, *run_row, *items, *event_arrays)
        except asyncpg.UniqueViolationError as exc:
            if new_run is None or exc.constraint_name not in _RUN_KEYS:
                raise
            # A run inserted since the read (its transaction had not committed).
            raise await PostgresRuns._clash(self, new_run, key) from exc
        return record_from_row(session[0])

    async def renew_run(
        self: _Connected, session_id: str, run_id: str, *, lease_s: float, now: float,
        owner: str = "",
    ) -> bool:
        rows = await self._fetch(
            "UPDATE sessions SET lease_until = $3 WHERE id = $1 AND active_run_id = $2 "
            "AND ($4 = '' OR EXISTS (SELECT 1 FROM runs WHERE id = $2 AND owner = $4)) RETURNING 1",
            session_id,
            run_id,
            now + lease_s,
            owner,
        )
        if rows:
            return True
        await self._require(session_id)
        return False

    async def checkpoint(
        self: _Connected, session_id: str, run_id: str, checkpoint: Checkpoint
    ) -> SessionRecord:
        """One statement (see the module docstring)."""
        items, compact = checkpoint_items(checkpoint)
        update = checkpoint.run
        final = checkpoint.final
        rows = await self._fetch(
            _CHECKPOINT,
            session_id, run_id, compact, len(checkpoint.messages), len(items),
            len(checkpoint.messages_before_compact), checkpoint.now, final, checkpoint.release,
            checkpoint.uptime_s if final else 0.0, update.stop_reason,
            encode_usage(update.usage) if update.usage is not None else None,
            has_update(update), *update_params(update),
            *item_arrays(items), *_event_arrays(checkpoint.events), checkpoint.owner,
        )  # fmt: skip
        if not rows:
            await self._require(session_id)
            raise lease_lost(session_id, run_id)
        return record_from_row(rows[0])

    async def claim_runs(
        self: _Connected, owner: str, *, now: float, lease_s: float, stale_owner: str = ""
    ) -> list[RunRecord]:
        async with self._transaction() as conn:
            locked = await conn.fetch(
                "SELECT id FROM sessions WHERE active_run_id <> '' AND lease_until <= $1 "
                "FOR NO KEY UPDATE SKIP LOCKED",
                now,
            )
            if stale_owner:
                locked += await conn.fetch(
                    "SELECT s.id FROM runs a JOIN sessions s "
                    "ON s.id = a.session_id AND s.active_run_id = a.id "
                    f"WHERE a.owner = $1 AND a.status IN {_ACTIVE} "
                    "FOR NO KEY UPDATE OF s SKIP LOCKED",
                    stale_owner,
                )
            if not locked:
                return []
            # Read again under the locks: what another replica committed
            # before we locked a row is visible now.
            rows = await conn.fetch(
                "SELECT s.id, s.active_run_id, s.lease_until, a.status, a.owner "
                "FROM sessions s LEFT JOIN runs a ON a.id = s.active_run_id "
                "WHERE s.id = ANY($1::text[]) AND s.active_run_id <> ''",
                list({row[0] for row in locked}),
            )
            claimed, lost, active = [], [], []
            for session_id, active_run_id, lease_until, status, run_owner in rows:
                stale = bool(stale_owner) and run_owner == stale_owner and status in _ACTIVE_SET
                if lease_until > now and not stale:
                    continue
                if status is None or RunStatus(status).ended:
                    lost.append(session_id)
                else:
                    claimed.append(session_id)
                    active.append(active_run_id)
            if not claimed and not lost:
                return []
            records = await conn.fetch(_CLAIM, owner, now + lease_s, claimed, lost, active)
        return [run_from_row(row) for row in records]

    async def append_events(self: _Connected, events: Sequence[StoredEvent]) -> None:
        if events:
            await self._fetch(_insert_events(1), *_event_arrays(events))

    async def list_events(
        self: _Connected, run_id: str, after_sequence: int, limit: int
    ) -> list[StoredEvent]:
        rows = await self._fetch(
            f"SELECT {_EVENTS} FROM run_events WHERE run_id = $1 AND sequence > $2 "
            "ORDER BY sequence LIMIT $3",
            run_id,
            after_sequence,
            max(limit, 0),
        )
        return [event_from_row(row) for row in rows]

    async def get_run(self: _Connected, run_id: str) -> RunRecord | None:
        rows = await self._fetch(f"{_SELECT_RUN} WHERE id = $1", run_id)
        return run_from_row(rows[0]) if rows else None

    async def find_run(self: _Connected, session_id: str, idempotency_key: str) -> RunRecord | None:
        if not idempotency_key:
            return None
        rows = await self._fetch(
            f"{_SELECT_RUN} WHERE session_id = $1 AND idempotency_key = $2 "
            "AND idempotency_key <> ''",
            session_id,
            key_column(idempotency_key),
        )
        return run_from_row(rows[0]) if rows else None

    async def latest_run(self: _Connected, session_id: str) -> RunRecord | None:
        rows = await self._fetch(
            f"{_SELECT_RUN} WHERE session_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
            session_id,
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
        where: list[str] = ["session_id = $1"]
        params: list[object] = [session_id]
        if statuses:
            params.append([RunStatus(s).value for s in statuses])
            where.append(f"status = ANY(${len(params)}::text[])")
        if before is not None:
            params.extend(before)
            where.append(f"(created_at, id) < (${len(params) - 1}::float8, ${len(params)}::text)")
        params.append(max(limit, 0))
        rows = await self._fetch(
            f"{_SELECT_RUN} WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(params)}",
            *params,
        )
        if not rows:
            await self._require(session_id)
        return [run_from_row(row) for row in rows]

    async def prune_events(self: _Connected, ended_before: float) -> int:
        """One statement per `PRUNE_BATCH` runs (skipping runs another
        replica is pruning); a pruned run is marked so that the next prune
        skips it."""
        deleted = 0
        while True:
            rows = await self._fetch(_PRUNE, ended_before, PRUNE_BATCH)
            runs, events = rows[0]
            deleted += events
            if runs < PRUNE_BATCH:
                return deleted

    async def end_queued_run(
        self: _Connected, run_id: str, update: RunUpdate, events: Sequence[StoredEvent] = ()
    ) -> bool:
        rows = await self._fetch(
            _END_QUEUED, *update_params(update), run_id, *_event_arrays(events)
        )
        return rows[0][0] == 1


