"""The session-store interface.

History is append-only: a compaction appends a compact marker, and loads
start from the last marker. A run writes its progress as *checkpoints*: the
user message when it begins (`begin_run`), then every completed round (the
assistant message and its tool results) in one transaction each, so the
stored history is valid at every commit (no assistant tool call without its
result). What a run needs to resume after a crash (the round in progress,
pending decisions, usage so far) lives in its *run record* (`RunRecord.state`,
opaque to the store), and its events in the durable *event log*.

A run holds the session's *run lease* from `begin_run` to its final
checkpoint: at most one run per session across every replica sharing the
store. The owner renews the lease; a lease that expires (its process died)
or was released (a draining replica handed the run over) lets another
replica `claim_runs` and resume the run. Times are Unix seconds.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.store.hook_state import HookStateStore
from pilothouse.runtime.store.textsearch import SearchQuery

if TYPE_CHECKING:
    from pilothouse.runtime.store.feed import FeedFilter, FeedPage, FeedPosition


class SessionState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


#: `SessionRecord.last_run_stop_reason` of a run whose server died.
INTERRUPTED = "interrupted"


class RunStatus(StrEnum):
    """Where a run is in its life. QUEUED: waiting for the session's active
    run; RUNNING: holding the lease; WAITING_FOR_DECISION: running, blocked
    on an approval or question; FINISHED: ended and stored (`stop_reason`
    says how); INTERRUPTED: ended because its process died and it was not
    resumed (resume policy `interrupt`)."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_FOR_DECISION = "waiting_for_decision"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.INTERRUPTED)


@dataclass(slots=True)
class SessionRecord:
    """A session's metadata.

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
    always_approved_tools: builtins.list[str] = field(default_factory=list)
    active_run_id: str = ""
    last_run_id: str = ""
    last_run_stop_reason: str = ""
    last_run_usage: Usage = field(default_factory=Usage)
    #: The `AgentRecord.uid` the session is bound to ("": a session from
    #: before bindings, which runs whatever agent has its name).
    agent_uid: str = ""
    #: The pinned agent version; 0 for the latest.
    agent_version: int = 0


@dataclass(slots=True)
class CompactMarker:
    """A compaction in the stored history: what came before is summarised
    by `summary`."""

    summary: str
    created_at: float


@dataclass(slots=True)
class AgentRecord:
    """A registered agent (one version of it) as stored: `config` is the
    AgentConfig as given (JSON-compatible dict), `source` "file" or "api",
    `version` counts from 1 and goes up each time the config is replaced by
    a different one; `created_at` is when the agent was registered,
    `updated_at` when this version was made (Unix seconds). `uid` names the
    agent across its versions (new when the name is registered anew),
    `created_by` the principal that registered it, `removed` that the agent
    left the agents file (it takes no new runs)."""

    name: str
    config: dict[str, Any]
    source: str
    version: int
    created_at: float
    updated_at: float
    uid: str = ""
    created_by: str = ""
    removed: bool = False


#: One line of a stored transcript.
TranscriptItem = Message | CompactMarker


@dataclass(slots=True)
class RunRecord:
    """One run as stored.

    `agent_config` is the AgentConfig (JSON-compatible dict) the run started
    with, `agent_version` its registry version; `options` the run's options
    as a JSON-compatible dict; `idempotency_key` is unique per session when
    not empty. `owner` is the gRPC address of the replica running it,
    `attempt` how many times it was resumed. `state` is the runtime's
    checkpoint state (JSON-compatible, opaque to the store). `last_sequence`
    is the highest event sequence stored (read-only: computed by the store
    from the event log). `stop_reason` is a `StopReason` value once ended.
    """

    id: str
    session_id: str
    agent: str
    content: str
    created_at: float
    sender: str = ""
    agent_version: int = 0
    agent_config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""
    status: RunStatus = RunStatus.QUEUED
    owner: str = ""
    attempt: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    stop_reason: str = ""
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    iterations: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    last_sequence: int = 0


@dataclass(slots=True)
class StoredEvent:
    """One event of a run's durable event log. `sequence` counts from 1
    per run without gaps; `time` is Unix seconds; `kind` names the event
    (e.g. "text_delta", "done"); `payload` is its JSON text (the runtime's
    event codec; opaque to the store)."""

    run_id: str
    sequence: int
    time: float
    kind: str
    payload: str


@dataclass(slots=True)
class RunUpdate:
    """Fields of a run record a checkpoint changes; None leaves a field as
    it is."""

    status: RunStatus | None = None
    iterations: int | None = None
    usage: Usage | None = None
    state: dict[str, Any] | None = None
    stop_reason: str | None = None
    error: str | None = None
    ended_at: float | None = None


@dataclass(slots=True)
class Checkpoint:
    """What one `checkpoint` writes, in one transaction.

    History: `messages_before_compact` (the run's messages from before a
    compaction during this checkpoint), a compact marker stamped `now` when
    `compact_summary` is set, then `messages`. `events` are appended to the
    run's event log. `run` changes the run record. With `final`, the run
    has ended: the session's lease is released, `uptime_s` is added to the
    session's uptime and its last-run fields are set (stop reason and usage
    from `run`). With `release` (a handover), the lease is given up but the
    session keeps the run as its active run, so that any replica may
    `claim_runs` it at once.
    """

    now: float
    messages: builtins.list[Message] = field(default_factory=list)
    compact_summary: str | None = None
    messages_before_compact: builtins.list[Message] = field(default_factory=list)
    events: builtins.list[StoredEvent] = field(default_factory=list)
    run: RunUpdate = field(default_factory=RunUpdate)
    final: bool = False
    release: bool = False
    uptime_s: float = 0.0
    #: When set, the run's record must name this owner: a replica that
    #: paused past its lease while another took the run over cannot write.
    owner: str = ""


@dataclass(slots=True)
class MessageMatch:
    """A message that matches a search. `position` is its index in the
    session's transcript (from 0, compact markers counted: stable, since
    history only grows); `snippet` the matching passage of its content,
    `highlights` the (start, end) code-point ranges of the matched words in
    `snippet`; `score` its relevance (higher is better)."""

    position: int
    role: Role
    snippet: str
    highlights: builtins.list[tuple[int, int]]
    created_at: float
    score: float


@dataclass(slots=True)
class SessionMatch:
    """A session found by `search_sessions`: its record, its relevance
    (the best of its messages'; higher is better, comparable only within
    one search) and its best-matching messages, best first."""

    session: SessionRecord
    score: float
    matches: builtins.list[MessageMatch]


class AgentStore(Protocol):
    """The agent registry, shared by every replica on the store (see
    `agent_store` for each backend's). Every version is kept until the
    agent is deleted."""

    async def put_agent(self, record: AgentRecord, *, replace: bool) -> AgentRecord:
        """Store an agent and return it as stored, its version kept. Without
        `replace`, AlreadyExistsError (AGENT_EXISTS) when the name is taken
        (`record.uid`, `created_by` are the new agent's); with it, an
        existing agent takes the new config and source, its version going up
        by one unless both are unchanged, and is no longer `removed`; its
        uid and creator change only with the source. `record.version` is
        ignored."""
        ...

    async def update_agent(
        self, name: str, config: dict[str, Any], *, expected_version: int, now: float
    ) -> AgentRecord | None:
        """A new version of agent `name` with `config` (none when it is
        unchanged), kept; the agent as stored, or None when unknown.
        AbortedError (AGENT_VERSION_CONFLICT) when its version is no longer
        `expected_version`."""
        ...

    async def set_agent_removed(self, name: str, removed: bool) -> bool:
        """Mark an agent removed (or not); False if there is none."""
        ...

    async def get_agent(self, name: str) -> AgentRecord | None:
        """The agent's latest version, or None."""
        ...

    async def get_agent_version(self, name: str, version: int) -> AgentRecord | None:
        """One version of an agent (its `updated_at` when the version was
        made), or None."""
        ...

    async def list_agent_versions(
        self, name: str, *, before: int, limit: int
    ) -> builtins.list[AgentRecord]:
        """Up to `limit` versions of an agent below `before` (0: no bound),
        newest first."""
        ...

    async def list_agents(self) -> builtins.list[AgentRecord]:
        """Every agent, in alphabetical order of name."""
        ...

    async def delete_agent(self, name: str) -> bool:
        """Remove an agent and its versions; False if there was none."""
        ...


class SessionStore(HookStateStore, AgentStore, Protocol):
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
    ) -> builtins.list[SessionRecord]:
        """Sessions matching the non-empty filters, most recently updated
        first (ties by id)."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove the session, its history, its runs and their events."""
        ...

    async def load_history(self, session_id: str) -> builtins.list[Message]:
        """The model-visible history: the messages after the last compact
        marker, preceded by the marker's summary as a user message."""
        ...

    async def list_messages(
        self,
        session_id: str,
        offset: int,
        limit: int,
        *,
        newest_first: bool = False,
        max_bytes: int = 0,
    ) -> builtins.list[Message]:
        """A page of `load_history`, oldest first (or newest first): up to
        `limit` messages from `offset`, and, when `max_bytes` > 0, only as
        many as fit in `max_bytes` of stored size (`codec.stored_size`): the
        page stops before the message that would pass it, but always holds
        at least one message."""
        ...

    async def transcript(self, session_id: str) -> builtins.list[TranscriptItem]:
        """Everything ever stored, in order, compact markers included."""
        ...

    async def transcript_page(
        self, session_id: str, offset: int, limit: int, *, max_bytes: int = 0
    ) -> builtins.list[TranscriptItem]:
        """`transcript()[offset:offset + limit]`, cut by `max_bytes` as
        `list_messages` is: read a long transcript in bounded pages (the
        transcript only grows, so consecutive pages join up)."""
        ...

    # --- Runs: lease, checkpoints, records, events -------------------------

    async def insert_run(self, record: RunRecord) -> None:
        """Store a new run record (a queued run: no lease is taken).
        AlreadyExistsError (reason RUN_EXISTS, metadata `run_id` of the
        existing run) when the session already has a run with the same
        non-empty `idempotency_key`, or the id is taken."""
        ...

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
        """In one transaction: take the session's run lease for `lease_s`
        seconds, insert `new_run` (when given; else the run's record must
        exist), set the run RUNNING with `started_at` = `now` and owner
        `new_run.owner` or as stored, append `messages` to the history (the
        user message) and `events` to the run's log. Returns the session.

        Raises FailedPreconditionError (reason RUN_ACTIVE, metadata
        session_id, active_run_id and `lease_expired` "true" or "false")
        while the session has another active run whose record has not
        ended, even when its lease expired or was released: that run is
        for `claim_runs` to resume, not for a new run to overwrite.
        FailedPreconditionError (reason SESSION_CLOSED) for a closed session,
        NotFoundError (reason RUN_NOT_FOUND) when `new_run` is None and the
        run has no record, AlreadyExistsError like `insert_run`; nothing is
        written then. An active run id without a record, or whose record
        ended, with an expired lease is taken over: the session's last-run
        fields record it as "interrupted" first."""
        ...

    async def renew_run(
        self, session_id: str, run_id: str, *, lease_s: float, now: float, owner: str = ""
    ) -> bool:
        """Extend the lease; False if `run_id` no longer holds it, or (with
        `owner`) its record names another owner (it was taken over)."""
        ...

    async def checkpoint(self, session_id: str, run_id: str, checkpoint: Checkpoint) -> SessionRecord:
        """Write `checkpoint` (see `Checkpoint`) in one transaction and
        return the session. The session's message count and `updated_at`
        follow the appended messages. Raises FailedPreconditionError
        (reason LEASE_LOST) if `run_id` no longer holds the lease (a
        released lease still counts as held by its run until it is claimed
        or taken over); nothing is written then."""
        ...

    async def claim_runs(
        self, owner: str, *, now: float, lease_s: float, stale_owner: str = ""
    ) -> builtins.list[RunRecord]:
        """Take over the runs whose process is gone, for `owner`: every
        session whose active run's lease expired or was released, and also,
        when `stale_owner` is given, every active run owned by
        `stale_owner` whatever its lease (a restarted process settling its
        own runs). For each such session, in one transaction: the lease is
        renewed for `lease_s` seconds, the active run's `owner` becomes
        `owner` and its `attempt` goes up by one, and the session's QUEUED
        runs get `owner` too. Returns those records (active runs first, then
        queued ones, oldest first), `last_sequence` filled in. A session
        whose active run has no record is marked interrupted instead, as
        `begin_run` does."""
        ...

    async def append_events(self, events: Sequence[StoredEvent]) -> None:
        """Append events (of any runs) to their logs; an event whose
        (run_id, sequence) is stored already is skipped."""
        ...

    async def list_events(self, run_id: str, after_sequence: int, limit: int) -> builtins.list[StoredEvent]:
        """Up to `limit` events of `run_id` with sequence > `after_sequence`,
        in sequence order (empty for an unknown run)."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The record, `last_sequence` filled in; None if unknown."""
        ...

    async def find_run(self, session_id: str, idempotency_key: str) -> RunRecord | None:
        """The session's run with that idempotency key, or None."""
        ...

    async def latest_run(self, session_id: str) -> RunRecord | None:
        """The session's most recently created run, or None."""
        ...

    async def list_runs(
        self,
        session_id: str,
        *,
        statuses: Collection[RunStatus] = (),
        before: tuple[float, str] | None = None,
        limit: int,
    ) -> builtins.list[RunRecord]:
        """The session's runs, newest first (by `created_at`, then id
        descending), restricted to `statuses` when not empty, and to those
        strictly older than `before` = (created_at, id) when given. Raises
        NotFoundError for an unknown session."""
        ...

    async def prune_events(self, ended_before: float) -> int:
        """Delete the events of runs that ended before `ended_before`, all
        but each run's last (its `done`); records stay. Returns how many
        events were deleted."""
        ...

    async def end_queued_run(
        self, run_id: str, update: RunUpdate, events: Sequence[StoredEvent] = ()
    ) -> bool:
        """End a run that never started (cancelled while QUEUED, or its
        session became unusable): apply `update` (its final status, stop
        reason, end time) and append `events`, in one transaction, only if
        the run is still QUEUED; False otherwise (nothing written)."""
        ...

    async def read_feed(
        self,
        after: FeedPosition,
        limit: int,
        feed_filter: FeedFilter | None = None,
        *,
        upto: FeedPosition | None = None,
    ) -> FeedPage:
        """Up to `limit` stored events of every run after `after` in feed
        order (see `pilothouse.runtime.store.feed`), matching `feed_filter`,
        and only up to `upto` when given (a position read before, so final).
        Events of deleted sessions and pruned events are not in the feed."""
        ...

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
        """Sessions (matching the non-empty filters, as `list`) with a user
        or assistant message matching `query` (see `textsearch`), best first
        (ties: most recently updated first, then by id), from `offset`, up
        to `limit` of them, each with its `matches` best messages."""
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

    async def import_session(self, record: SessionRecord, items: builtins.list[TranscriptItem]) -> None:
        """Create `record` with `items` as its transcript, atomically.
        AlreadyExistsError (SESSION_EXISTS) for a taken id."""
        ...

    async def bind_session(
        self, session_id: str, agent_uid: str, agent_version: int, now: float
    ) -> SessionRecord:
        """Bind the session to an agent's uid and pin `agent_version` (0:
        the latest)."""
        ...

