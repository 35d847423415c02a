"""An in-process session store: tests, and single-process use without
durability. Same semantics as the durable stores (see `base`).

The error helpers (`session_not_found`, `run_active`, ...) are re-exported
here for the other stores."""

from __future__ import annotations

import copy
import dataclasses

from pilothouse.errors import (
    AlreadyExistsError,
    agent_exists,
    lease_lost,
    run_active,
    session_closed,
    session_not_found,
)
from pilothouse.runtime.messages import Message

__all__ = [
    "MemorySessionStore",
    "lease_lost",
    "run_active",
    "session_closed",
    "session_not_found",
    "visible_history",
]

from pilothouse.runtime.store.base import (
    INTERRUPTED,
    AgentRecord,
    CompactMarker,
    RunOutcome,
    SessionRecord,
    SessionState,
    TranscriptItem,
)


def visible_history(items: list[TranscriptItem]) -> list[Message]:
    """The model-visible history of a transcript: after the last compact
    marker, with its summary as the first (user) message."""
    start = 0
    summary: str | None = None
    for index, item in enumerate(items):
        if isinstance(item, CompactMarker):
            start, summary = index + 1, item.summary
    history = [m for m in items[start:] if isinstance(m, Message)]
    if summary is not None:
        marker = items[start - 1]
        history.insert(0, Message.user(summary))
        history[0].created_at = marker.created_at
    return history


def _copy_item(item: TranscriptItem) -> TranscriptItem:
    return item.copy() if isinstance(item, Message) else dataclasses.replace(item)


class MemorySessionStore:
    """Records and transcripts in dicts; every read returns copies."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._items: dict[str, list[TranscriptItem]] = {}
        self._lease_until: dict[str, float] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._owners: dict[str, tuple[str, str]] = {}

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
            raise AlreadyExistsError(
                f"session {session_id!r} already exists",
                reason="SESSION_EXISTS",
                metadata={"session_id": session_id},
            )

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
    ) -> list[SessionRecord]:
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
        self._owners.pop(session_id, None)

    async def load_history(self, session_id: str) -> list[Message]:
        self._record(session_id)
        return [m.copy() for m in visible_history(self._items[session_id])]

    async def list_messages(
        self, session_id: str, offset: int, limit: int, *, newest_first: bool = False
    ) -> list[Message]:
        history = await self.load_history(session_id)
        if newest_first:
            history.reverse()
        return history[offset : offset + limit]

    async def transcript(self, session_id: str) -> list[TranscriptItem]:
        self._record(session_id)
        return [_copy_item(i) for i in self._items[session_id]]

    def _interrupt(self, record: SessionRecord) -> None:
        record.last_run_id = record.active_run_id
        record.last_run_stop_reason = INTERRUPTED
        record.active_run_id = ""
        self._lease_until.pop(record.id, None)

    async def begin_run(self, session_id: str, run_id: str, *, lease_s: float, now: float) -> None:
        record = self._record(session_id)
        if record.state is SessionState.CLOSED:
            raise session_closed(session_id)
        if record.active_run_id:
            if self._lease_until.get(session_id, 0.0) > now:
                raise run_active(session_id, record.active_run_id)
            self._interrupt(record)
        record.active_run_id = run_id
        self._lease_until[session_id] = now + lease_s

    async def renew_run(self, session_id: str, run_id: str, *, lease_s: float, now: float) -> bool:
        record = self._record(session_id)
        if record.active_run_id != run_id:
            return False
        self._lease_until[session_id] = now + lease_s
        return True

    async def finish_run(self, session_id: str, run_id: str, outcome: RunOutcome) -> SessionRecord:
        record = self._record(session_id)
        if record.active_run_id != run_id:
            raise lease_lost(session_id, run_id)
        items = self._items[session_id]
        items.extend(m.copy() for m in outcome.messages_before_compact)
        if outcome.compact_summary is not None:
            items.append(CompactMarker(outcome.compact_summary, outcome.finished_at))
        items.extend(m.copy() for m in outcome.messages)
        record.message_count = len(visible_history(items))
        record.uptime_s += outcome.uptime_s
        record.updated_at = outcome.finished_at
        record.last_run_id = run_id
        record.last_run_stop_reason = outcome.stop_reason
        record.last_run_usage = dataclasses.replace(outcome.usage)
        record.active_run_id = ""
        self._lease_until.pop(session_id, None)
        return self._copy(record)

    async def abandon_run(self, session_id: str, run_id: str, stop_reason: str, now: float) -> None:
        record = self._record(session_id)
        if record.active_run_id != run_id:
            return
        record.active_run_id = ""
        record.last_run_id = run_id
        record.last_run_stop_reason = stop_reason
        record.updated_at = now
        self._lease_until.pop(session_id, None)

    async def recover_interrupted(self, now: float) -> list[str]:
        recovered = []
        for record in self._records.values():
            if record.active_run_id and self._lease_until.get(record.id, 0.0) <= now:
                self._interrupt(record)
                recovered.append(record.id)
        return recovered

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

    async def import_session(self, record: SessionRecord, items: list[TranscriptItem]) -> None:
        self._check_new(record.id)
        self._records[record.id] = self._copy(record)
        self._items[record.id] = [_copy_item(i) for i in items]
        self._records[record.id].message_count = len(visible_history(items))

    # --- Agents -----------------------------------------------------------

    async def put_agent(self, record: AgentRecord, *, replace: bool) -> AgentRecord:
        current = self._agents.get(record.name)
        if current is None:
            stored = dataclasses.replace(record, config=copy.deepcopy(record.config), version=1)
        elif not replace:
            raise agent_exists(record.name)
        elif current.config == record.config and current.source == record.source:
            stored = current
        else:
            stored = dataclasses.replace(
                current,
                config=copy.deepcopy(record.config),
                source=record.source,
                version=current.version + 1,
                updated_at=record.updated_at,
            )
        self._agents[record.name] = stored
        return dataclasses.replace(stored, config=copy.deepcopy(stored.config))

    async def get_agent(self, name: str) -> AgentRecord | None:
        record = self._agents.get(name)
        return dataclasses.replace(record, config=copy.deepcopy(record.config)) if record else None

    async def list_agents(self) -> list[AgentRecord]:
        return [
            dataclasses.replace(r, config=copy.deepcopy(r.config))
            for _, r in sorted(self._agents.items())
        ]

    async def delete_agent(self, name: str) -> bool:
        return self._agents.pop(name, None) is not None

    # --- Run owners -------------------------------------------------------

    async def set_run_owner(self, session_id: str, run_id: str, owner: str) -> None:
        self._owners[session_id] = (run_id, owner)

    async def get_run_owner(self, session_id: str) -> tuple[str, str] | None:
        return self._owners.get(session_id)
