"""The runtime: agent registry, sessions and runs (seed 000 `Runtime`).

Agents are immutable values in a registry listed alphabetically. Sessions
live in the store; the runtime keeps recently used histories in a bounded
memory cache. A session has at most one active run (the store's run lease,
across replicas); what a message does while one is active is the run's
`ActiveRunPolicy`. A run's history is stored before its `Done` is
published; a failed or cancelled run stores only whole rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import SpanKind, Status, StatusCode

from pilothouse.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PilothouseError,
    UnavailableError,
    agent_not_found,
    no_active_run,
    run_active,
    session_closed,
    session_not_found,
)
from pilothouse.runtime import compaction
from pilothouse.runtime.agent import Agent, AgentConfig
from pilothouse.runtime.control import ActiveRunPolicy, Decision, RunOptions
from pilothouse.runtime.events import (
    AgentResponse,
    Done,
    RunQueued,
    RunStarted,
    StopReason,
)
from pilothouse.runtime.loop import DEFAULT_DECISION_TIMEOUT_S, LoopContext, run_agent
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import ChatModel, ChatRequest, ModelError
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.runs import Run, RunState
from pilothouse.runtime.store import jsonl
from pilothouse.runtime.store.base import (
    AgentRecord,
    RunOutcome,
    SessionRecord,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.tools import ASK_USER, ToolCatalog, ToolDispatcher

log = logging.getLogger(__name__)
tracer = trace.get_tracer("pilothouse.runtime")

#: Default limit on one user or steering message, in bytes of UTF-8.
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024
#: The seed's title prompt (seed 000 `spawn_title_generation`).
TITLE_PROMPT = (
    "Summarize this conversation in 3-6 words as a short title. "
    "Return ONLY the title, nothing else.\n\nUser: {user}\nAssistant: {assistant}"
)


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgumentError.field(field, "must not be empty")


def valid_prefix(history: list[Message], start: int) -> list[Message]:
    """`history` cut so that every assistant tool call after `start` has its
    tool results: an interrupted round is dropped whole."""
    end = len(history)
    index = start
    while index < end:
        message = history[index]
        if message.role is Role.ASSISTANT and message.tool_calls:
            needed = {c.id for c in message.tool_calls}
            answered = set()
            cursor = index + 1
            while cursor < end and history[cursor].role is Role.TOOL:
                answered.add(history[cursor].tool_call_id)
                cursor += 1
            if not needed <= answered:
                return history[:index]
            index = cursor
        else:
            index += 1
    return history


class RunElsewhere(Exception):
    """The run asked for is held by another replica, at `owner` (its gRPC
    address): the caller forwards the request there."""

    def __init__(self, owner: str, session_id: str, run_id: str) -> None:
        super().__init__(f"run {run_id} of session {session_id} is on {owner}")
        self.owner = owner
        self.session_id = session_id
        self.run_id = run_id


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """Tunables, in bytes, seconds and counts."""

    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES
    lease_s: float = 30.0
    event_retention_s: float = 300.0
    tombstone_s: float = 3600.0
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    session_cache_size: int = 1000
    generate_titles: bool = True


class Runtime:
    """Agents, sessions and runs. Methods raise `PilothouseError` subclasses
    for bad input or wrong state; see each docstring."""

    def __init__(
        self,
        *,
        model: ChatModel,
        default_model: str,
        dispatcher: ToolDispatcher,
        tools: ToolCatalog,
        store: SessionStore,
        limits: RuntimeLimits | None = None,
    ) -> None:
        self.model = model
        self.default_model = default_model
        self.dispatcher = dispatcher
        self.tools = tools
        if ASK_USER.name not in tools:
            tools.register(ASK_USER)
        self.store = store
        self.limits = limits or RuntimeLimits()
        self._agents: dict[str, Agent] = {}
        # Agents carry a snapshot of their tools: rebuild them when tools change.
        tools.on_change(self._agents.clear)
        self._cache: OrderedDict[str, tuple[tuple[float, int], list[Message]]] = OrderedDict()
        self._active: dict[str, Run] = {}
        self._queued: defaultdict[str, list[Run]] = defaultdict(list)
        self._runs: dict[str, Run] = {}
        self._last_run: dict[str, str] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._identity_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._keeper: asyncio.Task[None] | None = None
        #: This replica's gRPC address as other replicas reach it; "" when
        #: runs are not announced (a single process).
        self.address = ""
        #: Called with (run, response, duration_s) when a run ends.
        self.on_run_end: list[Callable[[Run, AgentResponse, float], None]] = []

    # --- Lifecycle --------------------------------------------------------

    async def start(self) -> list[str]:
        """Report runs interrupted by a crash (their leases expired) and
        start renewing the leases of this process's runs. Returns the
        sessions whose run was found interrupted."""
        interrupted = await self.store.recover_interrupted(time.time())
        for session_id in interrupted:
            log.warning("session %s: its last run was interrupted (server stopped)", session_id)
        self._keeper = asyncio.create_task(self._keep_leases(), name="lease-keeper")
        return interrupted

    async def _keep_leases(self) -> None:
        """Renew this process's run leases, and report runs whose owner
        died (their leases expired) as interrupted."""
        while True:
            await asyncio.sleep(self.limits.lease_s / 3)
            try:
                for session_id in await self.store.recover_interrupted(time.time()):
                    self._cache.pop(session_id, None)
                    log.warning("session %s: its last run was interrupted (its server died)", session_id)
            except PilothouseError as exc:
                log.warning("recovering interrupted runs failed: %s", exc.message)
            for run in list(self._active.values()):
                try:
                    held = await self.store.renew_run(
                        run.session_id, run.id, lease_s=self.limits.lease_s, now=time.time()
                    )
                except PilothouseError as exc:
                    log.warning("run %s: lease renewal failed: %s", run.id, exc.message)
                    continue
                if not held:
                    run.control.request_stop(StopReason.ERROR, "the session's run lease was lost")

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Refuse new runs (UNAVAILABLE); active and queued runs go on."""
        self._draining = True

    def active_runs(self) -> list[Run]:
        return [*self._active.values(), *(r for q in self._queued.values() for r in q)]

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is active or queued; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Refuse new runs, give active ones `grace_s` seconds, cancel what
        remains (history stays valid), stop background work and close the
        store."""
        self.begin_drain()
        if not await self.wait_idle(grace_s):
            for run in self.active_runs():
                run.control.request_stop(StopReason.CANCELLED, "the server is shutting down")
            await self.wait_idle(30.0)
        for task in [*self._background, *([self._keeper] if self._keeper else [])]:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._keeper is not None:
            await asyncio.gather(self._keeper, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- Agents -----------------------------------------------------------

    def _check_tools(self, config: AgentConfig) -> None:
        missing = self.tools.missing(config.tools)
        if missing:
            raise FailedPreconditionError(
                f"agent {config.name!r} names tools no ToolExecutor offers: {', '.join(missing)}",
                reason="TOOL_NOT_AVAILABLE",
                metadata={"agent": config.name, "tools": ",".join(missing)},
            )

    async def add_agent(
        self, config: AgentConfig, *, source: str = "api", replace: bool = False
    ) -> Agent:
        """Register an agent in the store's registry, shared by every replica
        (seed `add_agent`). ALREADY_EXISTS for a taken name unless `replace`
        (the agents file: a changed config gets a new version);
        FAILED_PRECONDITION when a tool it names is not registered here."""
        self._check_tools(config)
        now = time.time()
        record = await self.store.put_agent(
            AgentRecord(config.name, config.model_dump(mode="json"), source, 0, now, now),
            replace=replace,
        )
        agent = self._agent_of(record)
        log.info(
            "agent %s v%d registered (%s, model %s)",
            agent.name, agent.version, source, agent.config.model,
        )
        return agent

    def _agent_of(self, record: AgentRecord) -> Agent:
        """The immutable agent for a stored record, built once per version
        (the default model and this replica's tool schemas filled in)."""
        cached = self._agents.get(record.name)
        if cached is not None and cached.version == record.version:
            return cached
        config = AgentConfig.model_validate(record.config)
        if not config.model:
            config = config.model_copy(update={"model": self.default_model})
        agent = Agent(
            config,
            self.tools.snapshot(config.tools),
            created_at=record.created_at,
            source=record.source,
            version=record.version,
        )
        self._agents[record.name] = agent
        return agent

    async def get_agent(self, name: str, field: str = "name") -> Agent:
        """The agent as the registry has it now (another replica may have
        replaced or deleted it). INVALID_ARGUMENT for an empty name,
        NOT_FOUND if unknown."""
        _require(name, field)
        record = await self.store.get_agent(name)
        if record is None:
            self._agents.pop(name, None)
            raise agent_not_found(name)
        return self._agent_of(record)

    async def list_agents(self, size: int, token: str) -> tuple[list[Agent], str]:
        """A page of agents in alphabetical order and the next page token."""
        limit = page_size(size, default=50)
        after = decode_token(token, "agents") or ""
        records = [r for r in await self.store.list_agents() if r.name > after]
        page = [self._agent_of(r) for r in records[:limit]]
        more = len(records) > limit
        return page, encode_token("agents", page[-1].name) if more and page else ""

    async def delete_agent(self, name: str) -> None:
        """Remove an agent from the registry; NOT_FOUND if unknown. Its
        sessions stay readable; new runs on them fail with NOT_FOUND."""
        _require(name, "name")
        self._agents.pop(name, None)
        if not await self.store.delete_agent(name):
            raise agent_not_found(name)

    # --- Sessions ---------------------------------------------------------

    async def create_session(self, agent: str, created_by: str) -> SessionRecord:
        """Open a new session. NOT_FOUND for an unknown agent."""
        await self.get_agent(agent, "agent")
        now = time.time()
        record = SessionRecord(uuid.uuid4().hex, agent, created_by, now, now)
        await self.store.create(record)
        return record

    async def get_or_create_session(self, agent: str, created_by: str) -> tuple[SessionRecord, bool]:
        """The open session of (agent, created_by), or a new one (seed
        `get_or_create_session`); the bool says whether it was created."""
        await self.get_agent(agent, "agent")
        async with self._identity_lock:
            existing = await self.store.find_open(agent, created_by)
            if existing is not None:
                return existing, False
            return await self.create_session(agent, created_by), True

    async def get_session(self, session_id: str) -> SessionRecord:
        """INVALID_ARGUMENT for an empty id, NOT_FOUND if unknown."""
        _require(session_id, "session_id")
        record = await self.store.get(session_id)
        if record is None:
            raise session_not_found(session_id)
        return record

    def active_run(self, session_id: str) -> Run | None:
        """The session's running run in this process, if any."""
        return self._active.get(session_id)

    async def list_sessions(
        self,
        agent: str,
        created_by: str,
        size: int,
        token: str,
        state: SessionState | None = None,
    ) -> tuple[list[SessionRecord], str]:
        """A page of sessions, most recently active first."""
        limit = page_size(size, default=50)
        filters = {"agent": agent, "created_by": created_by, "state": state.value if state else ""}
        offset = decode_token(token, "sessions", filters) or 0
        records = await self.store.list(
            agent=agent, created_by=created_by, state=state, offset=offset, limit=limit + 1
        )
        more = len(records) > limit
        next_token = encode_token("sessions", offset + limit, filters) if more else ""
        return records[:limit], next_token

    def _check_idle(self, record: SessionRecord) -> None:
        run = self._active.get(record.id)
        run_id = run.id if run else record.active_run_id
        if run_id:
            raise run_active(record.id, run_id)

    async def close_session(self, session_id: str) -> SessionRecord:
        """Close a session (idempotent). FAILED_PRECONDITION while a run is
        active."""
        record = await self.get_session(session_id)
        self._check_idle(record)
        if record.state is SessionState.CLOSED:
            return record
        self._cache.pop(session_id, None)
        return await self.store.set_state(session_id, SessionState.CLOSED, time.time())

    async def delete_session(self, session_id: str) -> None:
        """Delete a session and its history. FAILED_PRECONDITION while a run
        is active."""
        record = await self.get_session(session_id)
        self._check_idle(record)
        self._cache.pop(session_id, None)
        await self.store.delete(session_id)

    async def list_messages(
        self, session_id: str, size: int, token: str, *, newest_first: bool = False
    ) -> tuple[list[Message], str]:
        """A page of the model-visible history."""
        limit = page_size(size, default=100)
        await self.get_session(session_id)
        filters = {"session_id": session_id, "newest_first": newest_first}
        offset = decode_token(token, "messages", filters) or 0
        messages = await self.store.list_messages(
            session_id, offset, limit + 1, newest_first=newest_first
        )
        more = len(messages) > limit
        return messages[:limit], encode_token("messages", offset + limit, filters) if more else ""

    async def compact_session(self, session_id: str) -> tuple[str, SessionRecord]:
        """Summarise the history with the agent's model and store a compact
        marker. FAILED_PRECONDITION while a run is active or for an empty
        history; UNAVAILABLE when the model fails."""
        record = await self.get_session(session_id)
        agent = await self.get_agent(record.agent)
        async with self._locks[session_id]:
            self._check_idle(record)
            history = await self._history(record)
            if not history:
                raise FailedPreconditionError(
                    f"session {session_id!r} has no history to compact",
                    reason="HISTORY_EMPTY",
                    metadata={"session_id": session_id},
                )
            try:
                summary = await compaction.summarize(self.model, agent, history)
            except ModelError as exc:
                raise UnavailableError(
                    f"compaction failed: {exc.message}", reason="MODEL_UNAVAILABLE"
                ) from exc
            record = await self.store.compact(session_id, summary, time.time())
            self._cache.pop(session_id, None)
        return summary, record

    async def export_session(self, session_id: str) -> bytes:
        """The session as JSON Lines (meta, messages, compact markers)."""

        await self.get_session(session_id)
        return await jsonl.export_jsonl(self.store, session_id)

    async def import_session(self, content: bytes) -> SessionRecord:
        """Import an exported session under a new id. INVALID_ARGUMENT naming
        the first bad line (nothing is written); NOT_FOUND when its agent is
        not registered."""

        return await jsonl.import_jsonl(
            self.store,
            content,
            new_id=uuid.uuid4().hex,
            now=time.time(),
            check_agent=lambda agent: self.get_agent(agent, "content"),  # awaited there
        )

    async def _history(self, record: SessionRecord) -> list[Message]:
        """The session's history, from the cache when it is current."""
        version = (record.updated_at, record.message_count)
        cached = self._cache.get(record.id)
        if cached is not None and cached[0] == version:
            self._cache.move_to_end(record.id)
            return cached[1]
        history = await self.store.load_history(record.id)
        self._remember(record, history)
        return history

    def _remember(self, record: SessionRecord, history: list[Message]) -> None:
        self._cache[record.id] = ((record.updated_at, record.message_count), history)
        self._cache.move_to_end(record.id)
        while len(self._cache) > self.limits.session_cache_size:
            self._cache.popitem(last=False)

    @property
    def cached_sessions(self) -> int:
        return len(self._cache)

    # --- Runs -------------------------------------------------------------

    def _check_content(self, content: str, field: str = "content") -> None:
        if not content.strip():
            raise InvalidArgumentError.field(field, "must not be empty")
        size = len(content.encode())
        if size > self.limits.max_content_bytes:
            raise InvalidArgumentError.field(
                field, f"is {size} bytes, over the limit of {self.limits.max_content_bytes}"
            )

    async def start_run(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        options: RunOptions | None = None,
    ) -> tuple[Run, bool]:
        """Start a run for a user message and return it at once, queued or
        running, with True; or, with ACTIVE_RUN_POLICY_STEER on a busy
        session, the active run it steered, with False.

        INVALID_ARGUMENT: empty or oversized content. NOT_FOUND: unknown
        session or agent. FAILED_PRECONDITION: the session is closed, or busy
        and the policy is REJECT (ErrorInfo metadata `active_run_id`).
        UNAVAILABLE: the server is draining or the store is down. RunElsewhere
        when the session is busy on another replica and the policy is not
        REJECT (the caller forwards the message there)."""
        options = options or RunOptions()
        self._check_content(content)
        record = await self.get_session(session_id)
        if self._draining:
            raise UnavailableError(
                "the server is shutting down; retry on another replica", reason="DRAINING"
            )
        if record.state is SessionState.CLOSED:
            raise session_closed(session_id)
        agent = await self.get_agent(record.agent)
        self._check_tools(agent.config)
        async with self._locks[session_id]:
            current = self._active.get(session_id)
            queue = self._queued[session_id]
            busiest = queue[-1] if queue else current
            if busiest is not None:
                policy = options.if_active
                if policy is ActiveRunPolicy.STEER:
                    self.steer(busiest, content, sender)
                    return busiest, False
                if policy is ActiveRunPolicy.ENQUEUE:
                    return self._enqueue(agent, session_id, content, sender, options, busiest), True
                if policy is ActiveRunPolicy.INTERRUPT:
                    for run in [*queue, *([current] if current else [])]:
                        run.control.request_stop(
                            StopReason.CANCELLED, "interrupted by a newer message"
                        )
                    for run in [*queue, *([current] if current else [])]:
                        await run.wait()
                else:
                    raise run_active(session_id, (current or busiest).id)
            run = Run(uuid.uuid4().hex, session_id, agent.name, content, sender, options)
            try:
                await self.store.begin_run(
                    session_id, run.id, lease_s=self.limits.lease_s, now=time.time()
                )
            except FailedPreconditionError as exc:
                # Busy on another replica: its policy is applied there.
                if exc.reason == "RUN_ACTIVE" and options.if_active is not ActiveRunPolicy.REJECT:
                    await self._check_elsewhere(session_id)
                raise
            await self._announce(run)
            self._admit(run)
            self._active[session_id] = run
            run.task = asyncio.create_task(self._execute(run, agent, None), name=f"run-{run.id}")
        return run, True

    def _admit(self, run: Run) -> None:
        self._runs[run.id] = run
        self._last_run[run.session_id] = run.id
        self._idle.clear()

    def _enqueue(
        self, agent: Agent, session_id: str, content: str, sender: str, options: RunOptions, after: Run
    ) -> Run:
        run = Run(uuid.uuid4().hex, session_id, agent.name, content, sender, options)
        queue = self._queued[session_id]
        queue.append(run)
        self._admit(run)
        position = len(queue) + (1 if session_id in self._active else 0) - 1
        run.log.append(RunQueued(position))
        run.task = asyncio.create_task(self._execute(run, agent, after), name=f"run-{run.id}")
        return run

    async def send_to(
        self, session_id: str, content: str, sender: str = "", options: RunOptions | None = None
    ) -> tuple[Run, AgentResponse]:
        """Start a run and wait for its response (seed `send_to`)."""
        run, _ = await self.start_run(session_id, content, sender, options)
        return run, await run.wait()

    def steer(self, run: Run, content: str, sender: str = "") -> None:
        """Queue steering content on a run. INVALID_ARGUMENT for empty or
        oversized content; FAILED_PRECONDITION (RUN_FINISHED) once the run has
        made its last model round."""
        self._check_content(content)
        run.control.steering.put(content, sender)

    async def steer_session(self, session_id: str, content: str, sender: str = "") -> Run:
        """Steer the session's active (or else next queued) run.
        FAILED_PRECONDITION (NO_ACTIVE_RUN) when there is none; RunElsewhere
        when another replica runs it."""
        await self.get_session(session_id)
        run = self._active.get(session_id) or next(iter(self._queued[session_id]), None)
        if run is None:
            await self._check_elsewhere(session_id)
            raise no_active_run(session_id)
        self.steer(run, content, sender)
        return run

    async def find_run(self, session_id: str, run_id: str = "") -> Run:
        """A run kept by this process: `run_id`, else the session's active
        run, else its next queued run, else its last run. RunElsewhere when
        the run is another replica's (the store records who runs a session's
        latest run). NOT_FOUND (RUN_NOT_FOUND) for an unknown or expired run
        id; FAILED_PRECONDITION (NO_ACTIVE_RUN) when the session has none."""
        await self.get_session(session_id)
        if run_id:
            run = self._runs.get(run_id)
            if run is None or run.session_id != session_id:
                await self._check_elsewhere(session_id, run_id)
                raise NotFoundError(
                    f"run {run_id!r} of session {session_id!r} not found (or no longer kept)",
                    reason="RUN_NOT_FOUND",
                    metadata={"session_id": session_id, "run_id": run_id},
                )
            return run
        run = self._active.get(session_id) or next(iter(self._queued[session_id]), None)
        if run is None:
            await self._check_elsewhere(session_id)
            last = self._last_run.get(session_id)
            run = self._runs.get(last) if last else None
        if run is None:
            raise no_active_run(session_id)
        return run

    async def _announce(self, run: Run) -> None:
        """Record this replica as the owner of `run` (for forwarding)."""
        if not self.address:
            return
        try:
            await self.store.set_run_owner(run.session_id, run.id, self.address)
        except PilothouseError as exc:
            log.warning("run %s: could not record its owner: %s", run.id, exc.message)

    async def _check_elsewhere(self, session_id: str, run_id: str = "") -> None:
        """Raise RunElsewhere when the session's latest run (or `run_id`,
        if it is that run) belongs to another replica."""
        if not self.address:
            return
        owner = await self.store.get_run_owner(session_id)
        if owner is None:
            return
        latest, address = owner
        if address != self.address and (not run_id or run_id == latest):
            raise RunElsewhere(address, session_id, latest)

    async def cancel(self, session_id: str, run_id: str = "", reason: str = "") -> tuple[Run, bool]:
        """Cancel a run and wait until it has stopped and its history is
        stored. Returns (run, already_finished). Errors as `find_run`."""
        run = await self.find_run(session_id, run_id)
        if run.finished:
            return run, True
        run.control.request_stop(StopReason.CANCELLED, reason or "cancelled by the client")
        await run.wait()
        return run, False

    async def submit_decision(self, session_id: str, decision: Decision) -> Run:
        """Answer a pending approval or question of the session's runs.
        NOT_FOUND (DECISION_NOT_PENDING) when none is waiting for it."""
        await self.get_session(session_id)
        candidates = [r for r in [self._active.get(session_id), *self._queued[session_id]] if r]
        for run in candidates:
            if decision.request_id in run.control.pending_requests():
                run.control.decide(decision)
                return run
        if not candidates:
            await self._check_elsewhere(session_id)
        raise NotFoundError(
            f"session {session_id!r} has no pending request {decision.request_id!r}",
            reason="DECISION_NOT_PENDING",
            metadata={"session_id": session_id, "request_id": decision.request_id},
        )

    async def _execute(self, run: Run, agent: Agent, predecessor: Run | None) -> None:
        if predecessor is not None and not await self._wait_turn(run, predecessor):
            return
        started = time.monotonic()
        record = await self.store.get(run.session_id)
        history: list[Message] = []
        pre_run_len = 0
        ctx = LoopContext(run.session_id, run.id, run.control)
        try:
            if record is None:
                raise session_not_found(run.session_id)
            history = list(await self._history(record))
            pre_run_len = len(history)
        except PilothouseError as exc:
            self._release(run)
            await self._abandon(run, exc.message)
            run.finish(Done(AgentResponse("", 0, StopReason.ERROR, [], agent.config.model, error=exc.message)))
            self._after(run, started)
            return
        run.state = RunState.RUNNING
        run.control.approved_tools = set(record.always_approved_tools)
        history.append(Message.user(run.content, run.sender))
        ctx.history_start = pre_run_len
        ctx.decision_timeout_s = self.limits.decision_timeout_s
        ctx.remember_approval = lambda tool: self._remember_approval(run.session_id, tool)
        run.log.append(RunStarted(agent.name, agent.config.model, run.content, run.sender))
        timer = None
        if run.options.timeout_s:
            timer = asyncio.get_running_loop().call_later(
                run.options.timeout_s,
                run.control.request_stop,
                StopReason.TIMEOUT,
                f"the run passed its time limit of {run.options.timeout_s:g}s",
            )
        done: Done | None = None
        with tracer.start_as_current_span(
            f"{gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value} {agent.name}",
            kind=SpanKind.INTERNAL,
        ) as span:
            span.set_attribute(
                gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value
            )
            span.set_attribute(gen_ai.GEN_AI_AGENT_NAME, agent.name)
            span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, run.session_id)
            span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, agent.config.model)
            span.set_attribute("pilothouse.run.id", run.id)
            try:
                async for event in run_agent(agent, self.model, self.dispatcher, history, ctx):
                    if isinstance(event, Done):
                        done = event  # held back until the history is stored
                    else:
                        run.log.append(event)
            except asyncio.CancelledError:
                # The task itself was cancelled (event loop shutdown): store
                # what is whole, then let the cancellation through.
                done = Done(AgentResponse("", 0, StopReason.CANCELLED, [], agent.config.model,
                                          usage=ctx.usage))
                await asyncio.shield(self._finish(run, history, ctx, started, done))
                raise
            except Exception as exc:  # a bug: still end the run cleanly
                log.exception("run %s failed", run.id)
                done = Done(AgentResponse("", 0, StopReason.ERROR, [], agent.config.model,
                                          error=f"internal error: {type(exc).__name__}",
                                          usage=ctx.usage))
            finally:
                if timer is not None:
                    timer.cancel()
            assert done is not None
            span.set_attribute("pilothouse.run.stop_reason", done.response.stop_reason.value)
            if done.response.stop_reason is StopReason.CANCELLED:
                span.add_event("cancelled", {"pilothouse.reason": done.response.error})
            if done.response.stop_reason is StopReason.ERROR:
                span.set_attribute("error.type", "run_error")
                span.set_status(Status(StatusCode.ERROR, done.response.error))
            await self._finish(run, history, ctx, started, done)

    async def _wait_turn(self, run: Run, predecessor: Run) -> bool:
        """Wait for the run ahead, then take the lease. False when the run
        ended while queued (cancelled, or the lease could not be taken)."""
        stop = asyncio.ensure_future(run.control.stop_event.wait())
        ahead = asyncio.ensure_future(predecessor.wait())
        try:
            await asyncio.wait({stop, ahead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if run.control.stopped:
            ahead.cancel()
            self._dequeue(run)
            run.finish(Done(AgentResponse("", 0, run.control.stop_reason or StopReason.CANCELLED,
                                          [], "", error=run.control.stop_message)))
            self._after(run, time.monotonic())
            return False
        async with self._locks[run.session_id]:
            self._dequeue(run)
            try:
                await self.store.begin_run(
                    run.session_id, run.id, lease_s=self.limits.lease_s, now=time.time()
                )
            except PilothouseError as exc:
                run.finish(Done(AgentResponse("", 0, StopReason.ERROR, [], "", error=exc.message)))
                self._after(run, time.monotonic())
                return False
            await self._announce(run)
            self._active[run.session_id] = run
        return True

    def _dequeue(self, run: Run) -> None:
        queue = self._queued.get(run.session_id)
        if queue and run in queue:
            queue.remove(run)
        if queue == []:
            self._queued.pop(run.session_id, None)

    async def _remember_approval(self, session_id: str, tool: str) -> None:
        try:
            await self.store.add_approved_tool(session_id, tool)
        except PilothouseError as exc:
            log.warning("session %s: could not store approval of %s: %s", session_id, tool, exc.message)

    def _release(self, run: Run) -> None:
        if self._active.get(run.session_id) is run:
            del self._active[run.session_id]

    async def _abandon(self, run: Run, why: str) -> None:
        with contextlib.suppress(PilothouseError):
            await self.store.abandon_run(run.session_id, run.id, StopReason.ERROR.value, time.time())

    async def _finish(
        self, run: Run, history: list[Message], ctx: LoopContext, started: float, done: Done
    ) -> None:
        """Store the run's new messages (append-only, only whole rounds),
        then publish `Done` and release the session."""
        kept = valid_prefix(history, ctx.history_start)
        outcome = RunOutcome(
            messages=kept[ctx.history_start :],
            stop_reason=done.response.stop_reason.value,
            usage=done.response.usage,
            uptime_s=time.monotonic() - started,
            finished_at=time.time(),
            compact_summary=ctx.compact_summary,
            messages_before_compact=ctx.messages_before_compact,
        )
        try:
            record = await self.store.finish_run(run.session_id, run.id, outcome)
            self._remember(record, kept)
        except PilothouseError as exc:
            log.error("run %s: storing history failed: %s", run.id, exc.message)
            self._cache.pop(run.session_id, None)
            done = Done(
                dataclasses.replace(
                    done.response,
                    stop_reason=StopReason.ERROR,
                    error=f"storing the session history failed: {exc.message}",
                )
            )
            record = None
        finally:
            self._release(run)
        run.finish(done)
        self._after(run, started)
        if (
            record is not None
            and self.limits.generate_titles
            and not record.title
            and any(m.role is Role.ASSISTANT and m.content for m in kept)
        ):
            self._spawn(self._generate_title(record, kept), f"title-{run.session_id}")

    def _after(self, run: Run, started: float) -> None:
        """Bookkeeping once a run has finished: retention timers, idleness,
        observers and the run's log line."""
        loop = asyncio.get_running_loop()
        loop.call_later(self.limits.event_retention_s, run.log.trim)
        loop.call_later(self.limits.tombstone_s, self._forget_run, run)
        if not self._active and not any(self._queued.values()):
            self._idle.set()
        response = run.response
        assert response is not None
        duration = time.monotonic() - started
        for observer in self.on_run_end:
            try:
                observer(run, response, duration)
            except Exception:  # an observer must not break runs
                log.exception("run-end observer failed")
        log.info(
            "run %s on session %s ended: %s after %d rounds in %.3fs "
            "(%d prompt + %d completion tokens)",
            run.id, run.session_id, response.stop_reason.value, response.iterations, duration,
            response.usage.prompt_tokens, response.usage.completion_tokens,
            extra={
                "run_id": run.id,
                "session_id": run.session_id,
                "agent": run.agent,
                "stop_reason": response.stop_reason.value,
                "iterations": response.iterations,
                "input_tokens": response.usage.prompt_tokens,
                "output_tokens": response.usage.completion_tokens,
                "duration_s": round(duration, 6),
            },
        )

    def _forget_run(self, run: Run) -> None:
        self._runs.pop(run.id, None)
        if self._last_run.get(run.session_id) == run.id:
            del self._last_run[run.session_id]

    async def _generate_title(self, record: SessionRecord, history: list[Message]) -> None:
        """3-6 words from the first exchange (seed `spawn_title_generation`);
        failures are logged and leave the title empty."""
        user = next((m.content for m in history if m.role is Role.USER and not m.auto_injected), "")
        assistant = next((m.content for m in history if m.role is Role.ASSISTANT and m.content), "")
        if not user or not assistant:
            return
        agent = self._agents.get(record.agent)
        prompt = TITLE_PROMPT.format(user=user[:200], assistant=assistant[:200])
        request = ChatRequest(
            model=agent.config.model if agent else self.default_model,
            messages=[{"role": "user", "content": prompt}],
        )
        try:
            parts = [c.content async for c in self.model.stream(request) if c.content]
            text = "".join(parts).replace("\x00", "").strip().strip('"')
            title = " ".join(text.split())[:80]
            if title:
                current = await self.store.get(record.id)
                if current is not None and not current.title:
                    await self.store.set_title(record.id, title, time.time())
        except (ModelError, PilothouseError) as exc:
            log.info("session %s: title generation failed: %s", record.id, exc)
