"""The session-store interface.

History is append-only (seed 000): a run's new messages are appended in one
transaction together with the session's metadata, so a store never holds
half a run; a compaction appends a compact marker, and loads start from the
last marker. A run holds the session's *run lease* from `begin_run` to
`finish_run` (or `abandon_run`): at most one run per session across every
replica sharing the store; a lease whose owner died expires and its run is
reported interrupted. Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pilothouse.runtime.messages import Message, Usage


class SessionState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


#: `SessionRecord.last_run_stop_reason` of a run whose server died.
INTERRUPTED = "interrupted"


@dataclass(slots=True)
class SessionRecord:
    """A session's metadata (seed 000 session meta line).

    `active_run_id` is the run holding the lease ("" when idle);
    `last_run_stop_reason` is a `StopReason` value or "interrupted".
    """

    id: str
    agent: str
    created_by: str
    created_at: float
    updated_at: float
    title: str = ""
    state: SessionState = SessionState.OPEN
    message_count: int = 0
    uptime_s: float = 0.0
    always_approved_tools: list[str] = field(default_factory=list)
    active_run_id: str = ""
    last_run_id: str = ""
    last_run_stop_reason: str = ""
    last_run_usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class CompactMarker:
    """A compaction in the stored history: what came before is summarised
    by `summary`."""

    summary: str
    created_at: float


@dataclass(slots=True)
class AgentRecord:
    """A registered agent as stored: `config` is the AgentConfig as given
    (JSON-compatible dict), `source` "file" or "api", `version` counts from 1
    and goes up each time the config is replaced by a different one."""

    name: str
    config: dict[str, Any]
    source: str
    version: int
    created_at: float
    updated_at: float


#: One line of a stored transcript.
TranscriptItem = Message | CompactMarker


@dataclass(slots=True)
class RunOutcome:
    """What `finish_run` stores, in this order: `messages_before_compact`
    (the run's messages from before a compaction during the run), a compact
    marker when `compact_summary` is set, then `messages`; and the run's
    metadata."""

    messages: list[Message]
    stop_reason: str
    usage: Usage
    uptime_s: float
    finished_at: float
    compact_summary: str | None = None
    messages_before_compact: list[Message] = field(default_factory=list)


class SessionStore(Protocol):
    """Where sessions (and the agent registry) live.

    Every method raises `pilothouse.errors.UnavailableError` when the store
    cannot be reached, and methods taking a `session_id` raise
    `NotFoundError` (reason SESSION_NOT_FOUND) for an unknown session unless
    they say otherwise. Returned objects are copies: mutating them changes
    nothing stored.
    """

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""
        ...

    async def close(self) -> None: ...

    async def create(self, record: SessionRecord) -> None:
        """Store a new session. AlreadyExistsError (SESSION_EXISTS) for a
        taken id."""
        ...

    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None if unknown (no NotFoundError)."""
        ...

    async def find_open(self, agent: str, created_by: str) -> SessionRecord | None:
        """The most recently created open session of (agent, created_by)."""
        ...

    async def list(
        self,
        *,
        agent: str,
        created_by: str,
        state: SessionState | None,
        offset: int,
        limit: int,
    ) -> list[SessionRecord]:
        """Sessions matching the non-empty filters, most recently updated
        first (ties by id)."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove the session and its history."""
        ...

    async def load_history(self, session_id: str) -> list[Message]:
        """The model-visible history: the messages after the last compact
        marker, preceded by the marker's summary as a user message (seed
        000 `load_context`)."""
        ...

    async def list_messages(
        self, session_id: str, offset: int, limit: int, *, newest_first: bool = False
    ) -> list[Message]:
        """A page of `load_history`, oldest first (or newest first)."""
        ...

    async def transcript(self, session_id: str) -> list[TranscriptItem]:
        """Everything ever stored, in order, compact markers included."""
        ...

    async def begin_run(self, session_id: str, run_id: str, *, lease_s: float, now: float) -> None:
        """Take the session's run lease for `lease_s` seconds. Raises
        FailedPreconditionError (reason RUN_ACTIVE, metadata session_id and
        active_run_id) while another unexpired lease is held, and
        FailedPreconditionError (reason SESSION_CLOSED) for a closed session.
        An expired lease is taken over; its run is recorded as interrupted
        first."""
        ...

    async def renew_run(self, session_id: str, run_id: str, *, lease_s: float, now: float) -> bool:
        """Extend the lease; False if `run_id` no longer holds it."""
        ...

    async def finish_run(self, session_id: str, run_id: str, outcome: RunOutcome) -> SessionRecord:
        """In one transaction: append the outcome (compact marker first when
        set), update message count, uptime, updated_at and the last-run
        fields, and release the lease. Raises FailedPreconditionError
        (reason LEASE_LOST) if `run_id` no longer holds the lease; nothing
        is written then."""
        ...

    async def abandon_run(self, session_id: str, run_id: str, stop_reason: str, now: float) -> None:
        """Release the lease without appending (the run stored nothing),
        recording `stop_reason` as the last run's."""
        ...

    async def recover_interrupted(self, now: float) -> list[str]:
        """Mark every run whose lease expired as interrupted (last run stop
        reason "interrupted", lease released, nothing appended) and return
        their session ids."""
        ...

    async def compact(self, session_id: str, summary: str, now: float) -> SessionRecord:
        """Append a compact marker (CompactSession outside a run)."""
        ...

    async def set_state(
        self, session_id: str, state: SessionState, now: float
    ) -> SessionRecord: ...

    async def set_title(self, session_id: str, title: str, now: float) -> SessionRecord: ...

    async def add_approved_tool(self, session_id: str, tool: str) -> SessionRecord:
        """Remember an "approve always" for `tool` (idempotent)."""
        ...

    async def import_session(self, record: SessionRecord, items: list[TranscriptItem]) -> None:
        """Create `record` with `items` as its transcript, atomically.
        AlreadyExistsError (SESSION_EXISTS) for a taken id."""
        ...

    # --- The agent registry, shared by every replica on the store --------

    async def put_agent(self, record: AgentRecord, *, replace: bool) -> AgentRecord:
        """Store an agent and return it as stored. Without `replace`,
        AlreadyExistsError (AGENT_EXISTS) when the name is taken; with it, an
        existing agent takes the new config and source, its version going up
        by one unless both are unchanged. `record.version` is ignored."""
        ...

    async def get_agent(self, name: str) -> AgentRecord | None: ...

    async def list_agents(self) -> list[AgentRecord]:
        """Every agent, in alphabetical order of name."""
        ...

    async def delete_agent(self, name: str) -> bool:
        """Remove an agent; False if there was none."""
        ...

    # --- Which replica runs a session's latest run --------------------------

    async def set_run_owner(self, session_id: str, run_id: str, owner: str) -> None:
        """Record that `owner` (a replica's gRPC address) runs `run_id`, the
        session's latest run."""
        ...

    async def get_run_owner(self, session_id: str) -> tuple[str, str] | None:
        """(run_id, owner) of the session's latest run, or None."""
        ...
