"""An in-process session store (tests, and the walking skeleton)."""

from __future__ import annotations

import dataclasses

from pilothouse.errors import NotFoundError
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store.base import SessionRecord, SessionState


class MemorySessionStore:
    """Keeps records and histories in dicts; returns copies so callers never
    share mutable state with the store."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._history: dict[str, list[Message]] = {}

    def _record(self, session_id: str) -> SessionRecord:
        record = self._records.get(session_id)
        if record is None:
            raise NotFoundError(f"session {session_id!r} not found", metadata={"session_id": session_id})
        return record

    async def create(self, record: SessionRecord) -> None:
        self._records[record.id] = dataclasses.replace(record)
        self._history[record.id] = []

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        return dataclasses.replace(record) if record else None

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        matches = [
            r
            for r in self._records.values()
            if r.agent == agent and r.created_by == created_by and r.state is SessionState.OPEN
        ]
        if not matches:
            return None
        return dataclasses.replace(max(matches, key=lambda r: r.created_at))

    async def list(
        self, *, agent: str, created_by: str, offset: int, limit: int
    ) -> list[SessionRecord]:
        matches = [
            r
            for r in self._records.values()
            if (not agent or r.agent == agent) and (not created_by or r.created_by == created_by)
        ]
        matches.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [dataclasses.replace(r) for r in matches[offset : offset + limit]]

    async def load_history(self, session_id: str) -> list[Message]:
        self._record(session_id)
        return list(self._history[session_id])

    async def list_messages(self, session_id: str, offset: int, limit: int) -> list[Message]:
        self._record(session_id)
        return self._history[session_id][offset : offset + limit]

    async def append_run(
        self, session_id: str, messages: list[Message], *, uptime_s: float, updated_at: float
    ) -> SessionRecord:
        record = self._record(session_id)
        self._history[session_id].extend(messages)
        record.message_count = len(self._history[session_id])
        record.uptime_s += uptime_s
        record.updated_at = updated_at
        return dataclasses.replace(record)

    async def set_state(self, session_id: str, state: SessionState, updated_at: float) -> SessionRecord:
        record = self._record(session_id)
        record.state = state
        record.updated_at = updated_at
        return dataclasses.replace(record)

    async def close(self) -> None:
        return None
