"""The session-store interface.

History is append-only: a run's new messages are appended in one call
together with the session's metadata, so a store never holds half a run.
Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pilothouse.runtime.messages import Message


class SessionState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class SessionRecord:
    """A session's metadata (seed 000 session meta line)."""

    id: str
    agent: str
    created_by: str
    created_at: float
    updated_at: float
    title: str = ""
    state: SessionState = SessionState.OPEN
    message_count: int = 0
    uptime_s: float = 0.0


class SessionStore(Protocol):
    """Where sessions live. Every method raises
    `pilothouse.errors.UnavailableError` when the store cannot be reached;
    methods taking a `session_id` raise `NotFoundError` for an unknown one."""

    async def create(self, record: SessionRecord) -> None: ...

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        """The most recently created open session of (agent, created_by)."""
        ...

    async def list(
        self, *, agent: str, created_by: str, offset: int, limit: int
    ) -> list[SessionRecord]:
        """Sessions matching the non-empty filters, newest first."""
        ...

    async def load_history(self, session_id: str) -> list[Message]: ...

    async def list_messages(self, session_id: str, offset: int, limit: int) -> list[Message]:
        """History slice, oldest first."""
        ...

    async def append_run(
        self, session_id: str, messages: list[Message], *, uptime_s: float, updated_at: float
    ) -> SessionRecord:
        """Append a run's messages and update the metadata, atomically."""
        ...

    async def set_state(self, session_id: str, state: SessionState, updated_at: float) -> SessionRecord:
        ...

    async def close(self) -> None: ...
