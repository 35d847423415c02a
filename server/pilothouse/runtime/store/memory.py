"""An in-process session store: tests, and single-process use without
durability. Same semantics as the durable stores (see `base`)."""

from __future__ import annotations

import builtins
import copy
import dataclasses
from collections.abc import Collection, Sequence
from typing import TypeVar

from pilothouse.errors import (
    lease_lost,
    run_active,
    run_exists,
    run_not_found,
    session_closed,
    session_not_found,
)
from pilothouse.runtime.messages import Message, Usage
from pilothouse.runtime.store.agent_store import MemoryAgents
from pilothouse.runtime.store.base import (
    INTERRUPTED,
    AgentRecord,
    Checkpoint,
    CompactMarker,
    MessageMatch,
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionMatch,
    SessionRecord,
    SessionState,
    StoredEvent,
    TranscriptItem,
)
from pilothouse.runtime.store.codec import budget, encode_item, stored_size
from pilothouse.runtime.store.common import session_exists, visible_history
from pilothouse.runtime.store.feed import MemoryFeed
from pilothouse.runtime.store.hook_state import MemoryHookState
from pilothouse.runtime.store.textsearch import SearchQuery, scan


def _copy_item(item: TranscriptItem) -> TranscriptItem:
    return item.copy() if isinstance(item, Message) else dataclasses.replace(item)


class MemorySessionStore(MemoryAgents, MemoryHookState, MemoryFeed):
    """Records and transcripts in dicts; every read returns copies."""

    def __init__(self) -> None:
        MemoryFeed.__init__(self)
        self._records: dict[str, SessionRecord] = {}
        self._items: dict[str, builtins.list[TranscriptItem]] = {}
        self._lease_until: dict[str, float] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, builtins.list[StoredEvent]] = {}

    def _record(self, session_id: str) -> SessionRecord:
        record = self._records.get(session_id)
        if record is None:
            raise session_not_found(session_id)
        return record

    @staticmethod
    def _copy(record: SessionRecord) -> SessionRecord:
        return copy.deepcopy(record)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _check_new(self, session_id: str) -> None:
        if session_id in self._records:
            raise session_exists(session_id)

    async def create(self, record: SessionRecord) -> None:
        self._check_new(record.id)
        self._records[record.id] = self._copy(record)
        self._items[record.id] = []

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        return self._copy(record) if record else None

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        matches = [
            r
            for r in self._records.values()
            if r.agent == agent and r.created_by == created_by and r.state is SessionState.OPEN
        ]
        if not matches:
            return None
        return self._copy(max(matches, key=lambda r: (r.created_at, r.id)))

    async def list(
        self,
        *,
        agent: str,
        created_by: str,
        state: SessionState | None,
        offset: int,
        limit: int,
    ) -> builtins.list[SessionRecord]:
        matches = [
            r
            for r in self._records.values()
            if (not agent or r.agent == agent)
            and (not created_by or r.created_by == created_by)
            and (state is None or r.state is state)
        ]
        matches.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return [self._copy(r) for r in matches[offset : offset + limit]]

    async def delete(self, session_id: str) -> None:
        self._record(session_id)
        del self._records[session_id]
        del self._items[session_id]
        self._lease_until.pop(session_id, None)
        for run_id in [r.id for r in self._runs.values() if r.session_id == session_id]:
            del self._runs[run_id]
            self._events.pop(run_id, None)
        self._delete_session_hook_state(session_id)
        self._feed_forget(lambda e: e.run_id in self._runs)


    async def load_history(self, session_id: str) -> builtins.list[Message]:
        self._record(session_id)
        return [m.copy() for m in visible_history(self._items[session_id])]

    async def list_messages(
        self,
        session_id: str,
        offset: int,
        limit: int,
        *,
        newest_first: bool = False,
        max_bytes: int = 0,
    ) -> builtins.list[Message]:
        history = await self.load_history(session_id)
        if newest_first:
            history.reverse()
        return _cut(history[offset : offset + limit], max_bytes)

    async def transcript(self, session_id: str) -> builtins.list[TranscriptItem]:
        self._record(session_id)
        return [_copy_item(i) for i in self._items[session_id]]

    async def transcript_page(
        self, session_id: str, offset: int, limit: int, *, max_bytes: int = 0
    ) -> builtins.list[TranscriptItem]:
        self._record(session_id)
        page = self._items[session_id][max(offset, 0) : max(offset, 0) + max(limit, 0)]
        return [_copy_item(i) for i in _cut(page, max_bytes)]

    # --- Runs ---------------------------------------------------------------

    def _run_copy(self, run: RunRecord) -> RunRecord:
        copied = copy.deepcopy(run)
        events = self._events.get(run.id)
        copied.last_sequence = events[-1].sequence if events else 0
        return copied

    def _check_new_run(self, record: RunRecord) -> None:
        existing = self._runs.get(record.id)
        if existing is None and record.idempotency_key:
            existing = self._by_key(record.session_id, record.idempotency_key)
        if existing is not None:
            raise run_exists(existing.session_id, existing.id)

    def _by_key(self, session_id: str, key: str) -> RunRecord | None:
        return next(
            (r for r in self._runs.values()
             if r.session_id == session_id and r.idempotency_key == key),
            None,
        )

    def _owned(self, run_id: str, owner: str) -> bool:
        """No owner asked for, or the run's record names it."""
        run = self._runs.get(run_id)
        return not owner or (run is not None and run.owner == owner)

    async def insert_run(self, record: RunRecord) -> None:
        self._record(record.session_id)
        self._check_new_run(record)
        self._runs[record.id] = copy.deepcopy(record)

    def _is_run_of(self, run_id: str, session_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is not None and run.session_id == session_id

    def _lease_state(self, record: SessionRecord, now: float) -> tuple[bool, bool]:
        """(held by a run whose record has not ended, lease expired)."""
        run = self._runs.get(record.active_run_id)
        live_record = run is not None and not run.status.ended
        return live_record, self._lease_until.get(record.id, 0.0) <= now

    def _interrupt(self, record: SessionRecord) -> None:
        record.last_run_id = record.active_run_id
        record.last_run_stop_reason = INTERRUPTED
        record.active_run_id = ""
        self._lease_until.pop(record.id, None)

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
        record = self._record(session_id)
        if record.state is SessionState.CLOSED:
            raise session_closed(session_id)
        if new_run is not None:
            self._check_new_run(new_run)
        elif not self._is_run_of(run_id, session_id):
            raise run_not_found(session_id, run_id)
        if record.active_run_id and record.active_run_id != run_id:
            live_record, expired = self._lease_state(record, now)
            if live_record or not expired:
                raise run_active(session_id, record.active_run_id, lease_expired=expired)
            self._interrupt(record)
        if new_run is not None:
            self._runs[run_id] = copy.deepcopy(new_run)
        run = self._runs.get(run_id) if self._is_run_of(run_id, session_id) else None
        if run is not None:
            run.status = RunStatus.RUNNING
            run.started_at = now
        record.active_run_id = run_id
        self._lease_until[session_id] = now + lease_s
        self._append(record, list(messages), now)
        self._add_events(events)
        return self._copy(record)

    def _append(self, record: SessionRecord, messages: builtins.list[Message], now: float) -> None:
        if messages:
            self._items[record.id].extend(m.copy() for m in messages)
            record.message_count += len(messages)
            record.updated_at = now

    def _add_events(self, events: Sequence[StoredEvent]) -> None:
        added = []
        for event in events:
            log = self._events.setdefault(event.run_id, [])
            stored = dataclasses.replace(event)
            if log and event.sequence <= log[-1].sequence:
                if any(e.sequence == event.sequence for e in log):
                    continue
                log.append(stored)
                log.sort(key=lambda e: e.sequence)
            else:
                log.append(stored)
            added.append(stored)
        self._feed_add(added)

    def _feed_owner(self, run_id: str) -> tuple[str, str, str] | None:
        run = self._runs.get(run_id)
        session = self._records.get(run.session_id) if run is not None else None
        if run is None or session is None:
            return None
        return run.session_id, run.agent, session.created_by

    async def renew_run(
        self, session_id: str, run_id: str, *, lease_s: float, now: float, owner: str = ""
    ) -> bool:
        record = self._record(session_id)
        if record.active_run_id != run_id or not self._owned(run_id, owner):
            return False
        self._lease_until[session_id] = now + lease_s
        return True

    async def checkpoint(self, session_id: str, run_id: str, checkpoint: Checkpoint) -> SessionRecord:
        record = self._record(session_id)
        if record.active_run_id != run_id or not self._owned(run_id, checkpoint.owner):
            raise lease_lost(session_id, run_id)
        cp = checkpoint
        items = self._items[session_id]
        appended = bool(cp.messages_before_compact or cp.messages or cp.compact_summary is not None)
        items.extend(m.copy() for m in cp.messages_before_compact)
        if cp.compact_summary is not None:
            items.append(CompactMarker(cp.compact_summary, cp.now))
        items.extend(m.copy() for m in cp.messages)
        if appended:  # counted as the SQL stores do: no pass over the whole history
            if cp.compact_summary is not None:
                record.message_count = 1 + len(cp.messages)
            else:
                record.message_count += len(cp.messages_before_compact) + len(cp.messages)
            record.updated_at = cp.now
        run = self._runs.get(run_id)
        if run is not None:
            _apply(run, cp.run)
        self._add_events(cp.events)
        if cp.final:
            record.uptime_s += cp.uptime_s
            record.updated_at = cp.now
            record.last_run_id = run_id
            record.last_run_stop_reason = (cp.run.stop_reason or "") if run is None else run.stop_reason
            record.last_run_usage = dataclasses.replace(cp.run.usage or (run.usage if run else None) or Usage())
            record.active_run_id = ""
            self._lease_until.pop(session_id, None)
        elif cp.release:
            self._lease_until[session_id] = 0.0
        return self._copy(record)

    async def claim_runs(
        self, owner: str, *, now: float, lease_s: float, stale_owner: str = ""
    ) -> builtins.list[RunRecord]:
        active: builtins.list[RunRecord] = []
        queued: builtins.list[RunRecord] = []
        for record in self._records.values():
            if not record.active_run_id:
                continue
            run = self._runs.get(record.active_run_id)
            expired = self._lease_until.get(record.id, 0.0) <= now
            mine = bool(stale_owner) and run is not None and run.owner == stale_owner
            if not (expired or mine):
                continue
            if run is None or run.status.ended:
                self._interrupt(record)
                continue
            self._lease_until[record.id] = now + lease_s
            run.owner = owner
            run.attempt += 1
            active.append(run)
            for other in self._runs.values():
                if other.session_id == record.id and other.status is RunStatus.QUEUED:
                    other.owner = owner
                    queued.append(other)
        active.sort(key=lambda r: (r.created_at, r.id))
        queued.sort(key=lambda r: (r.created_at, r.id))
        return [self._run_copy(r) for r in [*active, *queued]]

    async def append_events(self, events: Sequence[StoredEvent]) -> None:
        self._add_events(events)

    async def list_events(self, run_id: str, after_sequence: int, limit: int) -> builtins.list[StoredEvent]:
        log = self._events.get(run_id, [])
        return [dataclasses.replace(e) for e in log if e.sequence > after_sequence][: max(limit, 0)]

    async def get_run(self, run_id: str) -> RunRecord | None:
        run = self._runs.get(run_id)
        return self._run_copy(run) if run else None

    async def find_run(self, session_id: str, idempotency_key: str) -> RunRecord | None:
        run = self._by_key(session_id, idempotency_key) if idempotency_key else None
        return self._run_copy(run) if run else None

    async def latest_run(self, session_id: str) -> RunRecord | None:
        runs = [r for r in self._runs.values() if r.session_id == session_id]
        if not runs:
            return None
        return self._run_copy(max(runs, key=lambda r: (r.created_at, r.id)))

    async def list_runs(
        self,
        session_id: str,
        *,
        statuses: Collection[RunStatus] = (),
        before: tuple[float, str] | None = None,
        limit: int,
    ) -> builtins.list[RunRecord]:
        self._record(session_id)
        wanted = set(statuses)
        runs = [
            r for r in self._runs.values()
            if r.session_id == session_id
            and (not wanted or r.status in wanted)
            and (before is None or (r.created_at, r.id) < before)
        ]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [self._run_copy(r) for r in runs[: max(limit, 0)]]

    async def prune_events(self, ended_before: float) -> int:
        pruned = 0
        for run in self._runs.values():
            log = self._events.get(run.id)
            if run.status.ended and run.ended_at < ended_before and log and len(log) > 1:
                pruned += len(log) - 1
                self._events[run.id] = log[-1:]
        if pruned:
            kept = {id(e) for log in self._events.values() for e in log}
            self._feed_forget(lambda e: id(e) in kept)
        return pruned

    async def end_queued_run(
        self, run_id: str, update: RunUpdate, events: Sequence[StoredEvent] = ()
    ) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.status is not RunStatus.QUEUED:
            return False
        _apply(run, update)
        self._add_events(events)
        return True

    async def search_sessions(
        self,
        query: SearchQuery,
        *,
        agent: str,
        created_by: str,
        state: SessionState | None,
        offset: int,
        limit: int,
        matches: int = 3,
    ) -> builtins.list[SessionMatch]:
        """A scan of every matching session's transcript (`textsearch.scan`)."""
        found = []
        for record in self._records.values():
            if (agent and record.agent != agent) or (created_by and record.created_by != created_by):
                continue
            if state is not None and record.state is not state:
                continue
            hits = []
            for position, item in enumerate(self._items[record.id]):
                if isinstance(item, Message) and (hit := scan(query, item)) is not None:
                    score, text, spans = hit
                    hits.append(MessageMatch(position, item.role, text, spans, item.created_at, score))
            if hits:
                hits.sort(key=lambda m: (-m.score, m.position))
                found.append(SessionMatch(self._copy(record), hits[0].score, hits[:matches]))
        found.sort(key=lambda f: (f.score, f.session.updated_at, f.session.id), reverse=True)
        return found[max(offset, 0) : max(offset, 0) + max(limit, 0)]

    async def compact(self, session_id: str, summary: str, now: float) -> SessionRecord:
        record = self._record(session_id)
        self._items[session_id].append(CompactMarker(summary, now))
        record.message_count = 1
        record.updated_at = now
        return self._copy(record)

    async def set_state(self, session_id: str, state: SessionState, now: float) -> SessionRecord:
        record = self._record(session_id)
        record.state = state
        record.updated_at = now
        return self._copy(record)

    async def set_title(self, session_id: str, title: str, now: float) -> SessionRecord:
        record = self._record(session_id)
        record.title = title
        return self._copy(record)

    async def add_approved_tool(self, session_id: str, tool: str) -> SessionRecord:
        record = self._record(session_id)
        if tool not in record.always_approved_tools:
            record.always_approved_tools.append(tool)
        return self._copy(record)

    async def import_session(self, record: SessionRecord, items: builtins.list[TranscriptItem]) -> None:
        self._check_new(record.id)
        self._records[record.id] = self._copy(record)
        self._items[record.id] = [_copy_item(i) for i in items]
        self._records[record.id].message_count = len(visible_history(items))


_T = TypeVar("_T", bound=Message | CompactMarker)


def _cut(items: builtins.list[_T], max_bytes: int) -> builtins.list[_T]:
    """The first of `items` that fit in `max_bytes` of stored size (at
    least one); all of them without a budget."""
    if max_bytes <= 0:
        return items
    return items[: budget([stored_size(encode_item(i)) for i in items], max_bytes)]


def _apply(run: RunRecord, update: RunUpdate) -> None:
    """Set the fields of `update` that are not None on `run`."""
    for name in ("status", "iterations", "stop_reason", "error", "ended_at"):
        value = getattr(update, name)
        if value is not None:
            setattr(run, name, value)
    if update.usage is not None:
        run.usage = dataclasses.replace(update.usage)
    if update.state is not None:
        run.state = copy.deepcopy(update.state)
