"""The run scheduler: admission, queues, leases, execution, resume and
handover.

A session has at most one active run across every replica sharing the
store (the store's run lease); what a message does while one is active is
its `ActiveRunPolicy`. Every run is a durable record: the user message is
stored when it begins, each completed round when it ends, its events in
the durable event log (`pilothouse.runtime.journal`).

Runs outlive their process. A replica renews the leases of its runs; a run
whose lease expired (its process died) or was released (a draining
replica handed it over) is claimed by the next replica that polls, or by
this process when it starts again, and resumed from its last checkpoint
with a `run_resumed` event; with the resume policy `interrupt` it is ended
as INTERRUPTED instead. Every path out of `_execute` ends the run with
`done` (or a handover) and releases the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    PilothouseError,
    UnavailableError,
    run_active,
    session_closed,
)
from pilothouse.identity import Principal
from pilothouse.runtime import eventcodec, spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.agents import AgentRegistry
from pilothouse.runtime.control import ActiveRunPolicy, RunOptions
from pilothouse.runtime.eventcodec import decode_value, encode_value
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    Done,
    RunEvent,
    RunQueued,
    RunResumed,
    RunStarted,
    StopReason,
    ToolResult,
)
from pilothouse.runtime.hookchain import NO_HOOKS, HookChain
from pilothouse.runtime.hooks import SessionInfo
from pilothouse.runtime.journal import EventWriter, RunJournal
from pilothouse.runtime.loop import (
    DEFAULT_DECISION_TIMEOUT_S,
    DEFAULT_MAX_OUTPUT_CHARS,
    LoopContext,
    Resume,
    run_agent,
)
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.runs import EventLog, Run, StoredRun, stored_events_loader
from pilothouse.runtime.sessions import SessionLocks, Sessions
from pilothouse.runtime.store.base import (
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.titles import generate_title, wants_title
from pilothouse.runtime.toolphase import round_from_json
from pilothouse.runtime.tools import ToolDispatcher

log = logging.getLogger(__name__)

#: Default limit on one user or steering message, in bytes of UTF-8.
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024


class ResumePolicy(StrEnum):
    """What a replica does with a run whose process is gone."""

    RESUME = "resume"
    INTERRUPT = "interrupt"


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """Tunables, in bytes, seconds and counts.

    `event_retention_s`: how long a finished run stays in this process's
    memory (later reads come from the store); `event_log_retention_s`: how
    long the store keeps a finished run's events (its `done` stays);
    `resume_poll_s`: how often a replica looks for runs to take over;
    `event_flush_s`: the batching interval of the durable event log;
    `delegation_max_depth`: how deep delegations may nest (a child of a
    client's run is at depth 1); `delegation_max_runs`: child runs one run
    may start; `subscription_poll_s`: how often event subscriptions look
    for other replicas' events; `subscription_buffer`: events a subscriber
    may fall behind by before it is dropped.
    """

    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES
    lease_s: float = 30.0
    event_retention_s: float = 300.0
    event_log_retention_s: float = 7 * 24 * 3600.0
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    session_cache_size: int = 1000
    generate_titles: bool = True
    resume_policy: ResumePolicy = ResumePolicy.RESUME
    resume_poll_s: float = 2.0
    event_flush_s: float = 0.05
    stream_retries: int = 2
    #: Tools whose ToolExecutor's `requires_approval` an admin lifted
    #: (PILOTHOUSE_APPROVAL_EXEMPT_TOOLS, audited at start).
    approval_exempt_tools: frozenset[str] = frozenset()
    #: Finished runs kept in memory at most (besides `event_retention_s`):
    #: memory levels off under a steady stream of runs.
    finished_runs_kept: int = 1000
    #: Stored bytes one page of ListMessages or ExportSession holds at most.
    page_bytes: int = 4 * 1024 * 1024
    #: Characters one model round may produce (STOP_REASON_OUTPUT_LIMIT).
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    # Delegation and subscriptions (see `runtime.delegation`, `runtime.subscriptions`).
    delegation_max_depth: int = 3
    delegation_max_runs: int = 8
    subscription_poll_s: float = 0.25
    subscription_buffer: int = 1024


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """A run held by another replica, at `owner` (its gRPC address)."""

    owner: str
    session_id: str
    run_id: str


#: Where a run is: here, in the store only, or on another replica.
RunLocation = Run | StoredRun | RemoteRun


def check_content(content: str, limit: int, field: str = "content") -> None:
    """INVALID_ARGUMENT for empty or oversized content."""
    if not content.strip():
        raise InvalidArgumentError.field(field, "must not be empty")
    size = len(content.encode())
    if size > limit:
        raise InvalidArgumentError.field(field, f"is {size} bytes, over the limit of {limit}")


class RunScheduler:
    """Admits, runs, resumes and hands over the runs of this replica."""

    def __init__(
        self,
        *,
        model: ChatModel,
        dispatcher: ToolDispatcher,
        store: SessionStore,
        agents: AgentRegistry,
        sessions: Sessions,
        locks: SessionLocks,
        limits: RuntimeLimits,
    ) -> None:
        self.model = model
        self.dispatcher = dispatcher
        self.store = store
        self.agents = agents
        self.sessions = sessions
        self.locks = locks
        self.limits = limits
        self.writer = EventWriter(store, limits.event_flush_s)
        #: This replica's gRPC address as other replicas reach it.
        self.address = ""
        #: Called with (run, response, duration_s) when a run ends.
        self.on_run_end: list[Callable[[Run, AgentResponse, float], None]] = []
        self._active: dict[str, Run] = {}
        self._queued: defaultdict[str, list[Run]] = defaultdict(list)
        self._runs: dict[str, Run] = {}
        self._journals: dict[str, RunJournal] = {}
        #: Finished runs still in memory, oldest first (later reads of their
        #: events come from the store).
        self._finished: OrderedDict[str, Run] = OrderedDict()
        #: Runs that ended but whose end is not stored yet (store down).
        self._unsettled: dict[str, Run] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: The hook plugins (see `pilothouse.runtime.hooks`).
        self.hooks: HookChain = NO_HOOKS

    # --- lifecycle ---------------------------------------------------------------

    @property
    def owner(self) -> str:
        """This replica's identity as a run owner."""
        return self.address or "local"

    async def start(self) -> list[str]:
        """Take over this process's own runs from before a restart and the
        runs whose lease expired, then start renewing leases, polling for
        runs to take over, and writing the event log. Returns the run ids
        taken over."""
        self.writer.start()
        taken = await self.claim(stale_owner=self.owner)
        self._loops = [
            asyncio.create_task(self._keep_leases(), name="lease-keeper"),
            asyncio.create_task(self._poll_claims(), name="run-claimer"),
            asyncio.create_task(self._prune(), name="event-pruner"),
        ]
        return taken

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Refuse new runs (UNAVAILABLE); active and queued runs go on;
        runs of other replicas are no longer taken over."""
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

    async def hand_over(self, timeout_s: float = 30.0) -> int:
        """Stop every run at a safe point and release it for another replica
        (or the next start) to resume. Returns how many were handed over."""
        runs = self.active_runs()
        for run in runs:
            run.stop(StopReason.HANDOVER, "the server is shutting down")
        await self.wait_idle(timeout_s)
        return sum(1 for r in runs if r.handed_over)

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Refuse new runs, give active ones `grace_s` seconds, cancel what
        remains (history stays valid), stop background work and close the
        store."""
        self.begin_drain()
        if not await self.wait_idle(grace_s):
            for run in self.active_runs():
                run.stop(StopReason.CANCELLED, "the server is shutting down")
            await self.wait_idle(30.0)
        for task in [*self._background, *self._loops]:
            task.cancel()
        await asyncio.gather(*self._background, *self._loops, return_exceptions=True)
        await self.writer.close()
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @property
    def background_idle(self) -> bool:
        """No background work (titles, settling) is pending."""
        return not self._background

    # --- leases and takeover -----------------------------------------------------

    async def _keep_leases(self) -> None:
        """Renew this process's run leases; a run that lost its lease (another
        replica took it over) is stopped."""
        while True:
            await asyncio.sleep(self.limits.lease_s / 3)
            for run in [*self._active.values(), *self._unsettled.values()]:
                try:
                    held = await self.store.renew_run(
                        run.session_id, run.id, lease_s=self.limits.lease_s, now=time.time(),
                        owner=self.owner,
                    )
                except PilothouseError as exc:
                    log.warning("run %s: lease renewal failed: %s", run.id, exc.message)
                    continue
                if not held:
                    run.stop(StopReason.ERROR, "the session's run lease was lost")

    async def _poll_claims(self) -> None:
        while True:
            await asyncio.sleep(self.limits.resume_poll_s)
            if self._draining:
                continue
            try:
                await self.claim()
            except PilothouseError as exc:
                log.warning("looking for runs to take over failed: %s", exc.message)

    async def _prune(self) -> None:
        interval = max(min(self.limits.event_log_retention_s / 4, 3600.0), 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                pruned = await self.store.prune_events(time.time() - self.limits.event_log_retention_s)
                if pruned:
                    log.info("pruned %d stored events of finished runs", pruned)
            except PilothouseError as exc:
                log.warning("pruning stored events failed: %s", exc.message)

    async def claim(self, stale_owner: str = "") -> list[str]:
        """Take over the runs whose process is gone (and, with
        `stale_owner`, this process's runs from before a restart): resume
        them, or end them as INTERRUPTED under the `interrupt` policy."""
        records = await self.store.claim_runs(
            self.owner, now=time.time(), lease_s=self.limits.lease_s, stale_owner=stale_owner
        )
        for record in records:
            if record.id in self._runs:
                continue
            if record.status is RunStatus.QUEUED:
                self._requeue(record)
            elif self.limits.resume_policy is ResumePolicy.INTERRUPT:
                await self._interrupt(record)
            else:
                await self._resume(record)
        return [r.id for r in records]

    def _run_of(self, record: RunRecord, log_: EventLog | None = None) -> Run:
        options = decode_value(RunOptions, record.options) if record.options else RunOptions()
        return Run(
            record.id, record.session_id, record.agent, record.content, record.sender, options,
            idempotency_key=record.idempotency_key, created_at=record.created_at,
            attempt=record.attempt, log=log_,
        )

    def _journal(self, run: Run, record: RunRecord | None = None) -> RunJournal:
        state = record.state if record is not None else {}
        journal = RunJournal(
            self.store, self.writer, run.session_id, run.id, clock=time.time,
            steps=list(state.get("steps", [])), tail=int(state.get("tail", 1)),
            principal=str(state.get("principal", "")),
            roles=tuple(state.get("roles", ())),
        )
        journal.speaker = run.options.agent  # a guest's answers say who gave them
        journal.owner = self.owner
        self._journals[run.id] = journal
        return journal

    def _durable_log(self, run_id: str, session_id: str, first: int, journal_sink) -> EventLog:
        log_ = EventLog(
            session_id, run_id, first_sequence=first, sink=journal_sink,
            older=stored_events_loader(self.store, session_id, run_id),
        )
        log_.observer = self.hooks.observer()  # hooks: on_event
        return log_

    async def _resume(self, record: RunRecord) -> None:
        """Continue a claimed run from its last checkpoint."""
        journal_box: list[RunJournal] = []
        log_ = self._durable_log(record.id, record.session_id, record.last_sequence + 1,
                                 lambda e: journal_box[0].record(e))
        run = self._run_of(record, log_)
        journal = self._journal(run, record)
        journal_box.append(journal)
        run.status = RunStatus.RUNNING
        agent = self.agents.build(record.agent_config, version=record.agent_version)
        reason = "handover" if record.state.get("handed_over") else "lease_expired"
        log.warning("run %s on session %s: resumed (attempt %d, %s)",
                    run.id, run.session_id, record.attempt, reason)
        self._admit(run)
        self._active[run.session_id] = run
        run.log.append(RunResumed(record.attempt, record.last_sequence, reason))
        run.task = asyncio.create_task(
            self._execute(run, agent, journal, resume_from=record), name=f"run-{run.id}"
        )

    def _requeue(self, record: RunRecord) -> None:
        """A claimed queued run waits again behind its session's run."""
        journal_box: list[RunJournal] = []
        log_ = self._durable_log(record.id, record.session_id, record.last_sequence + 1,
                                 lambda e: journal_box[0].record(e))
        run = self._run_of(record, log_)
        journal_box.append(self._journal(run, record))
        agent = self.agents.build(record.agent_config, version=record.agent_version)
        ahead = self._queued[run.session_id][-1] if self._queued[run.session_id] else (
            self._active.get(run.session_id)
        )
        self._queued[run.session_id].append(run)
        self._admit(run)
        run.task = asyncio.create_task(
            self._execute(run, agent, journal_box[0], predecessor=ahead), name=f"run-{run.id}"
        )

    async def _interrupt(self, record: RunRecord) -> None:
        """End a claimed run as INTERRUPTED (resume policy `interrupt`)."""
        log_ = self._durable_log(record.id, record.session_id, record.last_sequence + 1, None)
        run = self._run_of(record, log_)
        journal = self._journal(run, record)
        response = AgentResponse(
            "", record.iterations, StopReason.INTERRUPTED, [], record.agent_config.get("model", ""),
            error="the run's server stopped and the resume policy is interrupt",
            usage=record.usage,
        )
        done = run.done_event(Done(response))
        try:
            await journal.finish(done, stop_reason=StopReason.INTERRUPTED.value, error=response.error,
                                 usage=record.usage, iterations=record.iterations, uptime_s=0.0)
        except PilothouseError as exc:
            log.warning("run %s: could not record it as interrupted: %s", run.id, exc.message)
        self._journals.pop(run.id, None)
        log.warning("run %s on session %s: interrupted (its server stopped)", run.id, run.session_id)

    # --- admission -----------------------------------------------------------------

    async def start_run(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        options: RunOptions | None = None,
        *,
        idempotency_key: str = "",
        locate: Callable[[RunRecord], Coroutine[Any, Any, RunLocation]],
        caller: Principal | None = None,
    ) -> tuple[RunLocation, bool]:
        """Start a run for a user message and return where it is, with
        True; or, with ACTIVE_RUN_POLICY_STEER on a busy session, the active
        run it steered, and with an `idempotency_key` already used on the
        session, that key's run, with False.

        INVALID_ARGUMENT: empty or oversized content, or an idempotency key
        reused with other content (IDEMPOTENCY_KEY_REUSED). NOT_FOUND:
        unknown session or agent. FAILED_PRECONDITION: the session is
        closed, or busy and the policy is REJECT (ErrorInfo metadata
        `active_run_id`). UNAVAILABLE: the server is draining or the store
        is down. PERMISSION_DENIED (AGENT_NOT_ALLOWED): the agent is not
        for `caller`. A RemoteRun when the session is busy on another
        replica and the policy is not REJECT (the caller forwards the
        message). The session must be the caller's (NOT_FOUND otherwise)."""
        options = options or RunOptions()
        check_content(content, self.limits.max_content_bytes)
        record = await self.sessions.get(session_id, caller)
        if idempotency_key:
            existing = await self.store.find_run(session_id, idempotency_key)
            if existing is not None:
                return await self._existing(existing, content, locate), False
        if self._draining:
            raise UnavailableError(
                "the server is shutting down; retry on another replica", reason="DRAINING"
            )
        if record.state is SessionState.CLOSED:
            raise session_closed(session_id)
        if options.agent == record.agent:
            options = dataclasses.replace(options, agent="")
        # A guest turn runs another agent on this session (see Agent.host).
        agent = (await self.agents.get(options.agent or record.agent, "options.agent")
                 if options.agent else await self.agents.get(record.agent))
        agent = agent.with_overrides(options.model_overrides)
        self.agents.check_tools(agent.config)
        self.agents.check_model(agent.config)
        check_agent_access(agent, caller)
        for _ in range(2):
            try:
                return await self._admit_new(record, agent, content, sender, options,
                                             idempotency_key, caller)
            except AlreadyExistsError as exc:
                if exc.reason != "RUN_EXISTS" or not idempotency_key:
                    raise
                existing = await self.store.find_run(session_id, idempotency_key)
                if existing is None:
                    raise
                return await self._existing(existing, content, locate), False
            except FailedPreconditionError as exc:
                if exc.reason != "RUN_ACTIVE":
                    raise
                if exc.metadata.get("lease_expired") == "true" and not self._draining:
                    await self.claim()  # its process is gone: resume it here, then apply the policy
                    continue
                if options.if_active is not ActiveRunPolicy.REJECT:
                    latest = await self.store.latest_run(session_id)
                    if latest is not None and latest.owner and latest.owner != self.owner:
                        return RemoteRun(latest.owner, session_id, latest.id), False
                raise
        raise run_active(session_id, record.active_run_id, lease_expired=True)

    async def _existing(
        self, record: RunRecord, content: str,
        locate: Callable[[RunRecord], Coroutine[Any, Any, RunLocation]],
    ) -> RunLocation:
        """The run an idempotency key already names."""
        if record.content != content:
            raise _key_reused(record.session_id, record.id, record.idempotency_key)
        local = self._runs.get(record.id)
        return local if local is not None else await locate(record)

    def _new_run(
        self, agent: Agent, session_id: str, content: str, sender: str, options: RunOptions,
        idempotency_key: str, caller: Principal | None,
    ) -> tuple[Run, RunRecord, RunJournal]:
        run_id = uuid.uuid4().hex
        journal_box: list[RunJournal] = []
        log_ = self._durable_log(run_id, session_id, 1, lambda e: journal_box[0].record(e))
        run = Run(run_id, session_id, agent.name, content, sender, options,
                  idempotency_key=idempotency_key, log=log_)
        journal = self._journal(run)
        if caller is not None:
            journal.principal, journal.roles = caller.id, tuple(sorted(caller.roles))
        journal_box.append(journal)
        record = RunRecord(
            id=run.id, session_id=session_id, agent=agent.name, content=content,
            created_at=run.created_at, sender=sender, agent_version=agent.version,
            agent_config=agent.config.model_dump(mode="json"),
            options=encode_value(options), idempotency_key=idempotency_key,
            owner=self.owner, state=journal.state(),
        )
        return run, record, journal

    async def _admit_new(
        self, record: SessionRecord, agent: Agent, content: str, sender: str,
        options: RunOptions, idempotency_key: str, caller: Principal | None,
    ) -> tuple[RunLocation, bool]:
        session_id = record.id
        async with self.locks(session_id):
            if idempotency_key:  # a call with the same key that got here first
                same = next((r for r in self.session_runs(session_id)
                             if r.idempotency_key == idempotency_key), None)
                if same is not None:
                    if same.content != content:
                        raise _key_reused(session_id, same.id, idempotency_key)
                    return same, False
            current = self._active.get(session_id)
            queue = self._queued[session_id]
            busiest = queue[-1] if queue else current
            if busiest is not None:
                policy = options.if_active
                if policy is ActiveRunPolicy.STEER:
                    check_content(content, self.limits.max_content_bytes)
                    busiest.steer(content, sender)
                    return busiest, False
                if policy is ActiveRunPolicy.ENQUEUE:
                    return await self._enqueue(agent, session_id, content, sender, options,
                                               idempotency_key, busiest, caller), True
                if policy is ActiveRunPolicy.INTERRUPT:
                    for other in [*queue, *([current] if current else [])]:
                        other.stop(StopReason.CANCELLED, "interrupted by a newer message")
                    for other in [*queue, *([current] if current else [])]:
                        await other.wait()
                else:
                    raise run_active(session_id, (current or busiest).id)
            run, run_record, journal = self._new_run(agent, session_id, content, sender, options,
                                                     idempotency_key, caller)
            user = Message.user(content, sender)
            started = run.log.next_event(RunStarted(agent.name, agent.config.model, content, sender,
                                                    spans.current_traceparent()))
            try:
                user.content = await self._preprocess(record, run)  # hooks: preprocess
                after = await self.store.begin_run(
                    session_id, run.id, lease_s=self.limits.lease_s, now=time.time(),
                    messages=[user], new_run=run_record, events=[eventcodec.encode(started)],
                )
            except BaseException:
                self._journals.pop(run.id, None)
                raise
            run.log.publish(started)
            history = await self.sessions.history_after(record, after, [user])
            self._admit(run)
            self._active[session_id] = run
            run.status = RunStatus.RUNNING
            run.task = asyncio.create_task(
                self._execute(run, agent, journal, history=history), name=f"run-{run.id}"
            )
        return run, True

    def _admit(self, run: Run) -> None:
        self._runs[run.id] = run
        self._idle.clear()

    async def _enqueue(
        self, agent: Agent, session_id: str, content: str, sender: str, options: RunOptions,
        idempotency_key: str, after: Run, caller: Principal | None,
    ) -> Run:
        run, record, journal = self._new_run(agent, session_id, content, sender, options,
                                             idempotency_key, caller)
        try:
            await self.store.insert_run(record)
        except BaseException:
            self._journals.pop(run.id, None)
            raise
        queue = self._queued[session_id]
        queue.append(run)
        self._admit(run)
        position = len(queue) + (1 if session_id in self._active else 0) - 1
        run.log.append(RunQueued(position))
        run.task = asyncio.create_task(
            self._execute(run, agent, journal, predecessor=after), name=f"run-{run.id}"
        )
        return run

    async def _wait_turn(
        self, run: Run, agent: Agent, predecessor: Run, journal: RunJournal
    ) -> list[Message] | None:
        """Wait for the run ahead, then begin: take the lease and store the
        user message. The history, or None when the run ended while queued
        (cancelled, or the lease could not be taken): it is finished then."""
        stop = asyncio.ensure_future(run.control.stop_event.wait())
        ahead = asyncio.ensure_future(predecessor.wait())
        try:
            await asyncio.wait({stop, ahead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if run.control.stopped:
            ahead.cancel()
            self._dequeue(run)
            if run.control.stop_reason is StopReason.HANDOVER:
                run.release()
            else:
                await self._end_queued(run, journal, run.control.stop_reason or StopReason.CANCELLED,
                                       run.control.stop_message)
            self._after(run, time.monotonic())
            return None
        async with self.locks(run.session_id):
            self._dequeue(run)
            user = Message.user(run.content, run.sender)
            try:
                before = await self.sessions.get(run.session_id)
                user.content = await self._preprocess(before, run)  # hooks: preprocess
                await journal.writer.settle(run.id)
                pending = journal.take()
                started = run.log.next_event(
                    RunStarted(agent.name, agent.config.model, run.content, run.sender,
                               spans.current_traceparent())
                )
                try:
                    after = await self.store.begin_run(
                        run.session_id, run.id, lease_s=self.limits.lease_s, now=time.time(),
                        messages=[user], events=[eventcodec.encode(e) for e in [*pending, started]],
                    )
                except BaseException:
                    journal.put_back(pending)
                    raise
            except PilothouseError as exc:
                await self._end_queued(run, journal, StopReason.ERROR, exc.message)
                self._after(run, time.monotonic())
                return None
            self._active[run.session_id] = run
            run.status = RunStatus.RUNNING
        run.log.publish(started)
        return await self.sessions.history_after(before, after, [user])

    async def _end_queued(self, run: Run, journal: RunJournal, stop: StopReason, error: str) -> None:
        done = run.done_event(Done(AgentResponse("", 0, stop, [], "", error=error)))
        try:
            await journal.writer.settle(run.id)
            events = journal.take()
            await self.store.end_queued_run(
                run.id,
                RunUpdate(status=RunStatus.FINISHED, stop_reason=stop.value, error=error,
                          ended_at=time.time()),
                [eventcodec.encode(e) for e in [*events, done]],
            )
        except PilothouseError as exc:
            log.warning("run %s: could not store its end: %s", run.id, exc.message)
        run.finish(done)

    def _dequeue(self, run: Run) -> None:
        queue = self._queued.get(run.session_id)
        if queue and run in queue:
            queue.remove(run)
        if queue == []:
            self._queued.pop(run.session_id, None)

    # --- execution -----------------------------------------------------------------

    async def _execute(
        self,
        run: Run,
        agent: Agent,
        journal: RunJournal,
        *,
        history: list[Message] | None = None,
        predecessor: Run | None = None,
        resume_from: RunRecord | None = None,
    ) -> None:
        """Run the loop and end the run, whatever happens: `done` after the
        final checkpoint (or a handover), the session released."""
        if predecessor is not None:
            history = await self._wait_turn(run, agent, predecessor, journal)
            if history is None:
                return
        started = time.monotonic()
        ctx = LoopContext(run.session_id, run.id, run.control, journal,
                          decision_timeout_s=self.limits.decision_timeout_s,
                          stream_retries=self.limits.stream_retries,
                          max_output_chars=self.limits.max_output_chars,
                          principal=journal.principal, principal_roles=journal.roles)
        ctx.remember_approval = lambda tool: self._remember_approval(run.session_id, tool)
        done: Done | None = None
        with spans.agent_span(agent.name, agent.config.model, run.session_id, run.id) as span:
            timer = None
            try:
                record = await self.sessions.get(run.session_id)
                run.control.approved_tools = set(record.always_approved_tools)
                if run.options.agent and not agent.host:
                    agent = dataclasses.replace(agent, host=record.agent)
                if resume_from is not None:
                    history, ctx.resume = await self._resume_point(resume_from, journal)
                elif history is None:
                    history = await self.sessions.history(record)
                # hooks: recall (on_before_run) in the model's view, never stored
                ctx.hooks = self.hooks.bind(_session_info(record, run))
                await ctx.hooks.before_run(history, max(len(history) - journal.tail, 0))
                timer = self._start_timer(run, resume_from)
                async for event in run_agent(agent, self.model, self.dispatcher, history, ctx):
                    if isinstance(event, Done):
                        done = event  # held back until it is stored
                    else:
                        run.log.append(event)
            except asyncio.CancelledError:
                # The task itself was cancelled (event loop shutdown): store
                # what is whole, then let the cancellation through.
                done = Done(AgentResponse("", 0, StopReason.CANCELLED, [], agent.config.model,
                                          usage=ctx.usage))
                await asyncio.shield(self._settle(run, agent, journal, done, started, history))
                raise
            except PilothouseError as exc:
                log.warning("run %s failed: %s", run.id, exc.message)
                done = _error_done(agent, exc.message, ctx.usage)
            except Exception as exc:  # a bug: still end the run cleanly
                log.exception("run %s failed", run.id)
                done = _error_done(agent, f"internal error: {type(exc).__name__}", ctx.usage)
            finally:
                if timer is not None:
                    timer.cancel()
            if done is not None:
                spans.end_agent_span(span, done.response.stop_reason.value, done.response.error,
                                     cancelled=done.response.stop_reason is StopReason.CANCELLED)
            await self._settle(run, agent, journal, done, started, history)

    def _start_timer(self, run: Run, resumed: RunRecord | None) -> asyncio.TimerHandle | None:
        if not run.options.timeout_s:
            return None
        elapsed = time.time() - resumed.started_at if resumed is not None and resumed.started_at else 0.0
        return asyncio.get_running_loop().call_later(
            max(run.options.timeout_s - elapsed, 0.0),
            run.stop,
            StopReason.TIMEOUT,
            f"the run passed its time limit of {run.options.timeout_s:g}s",
        )

    async def _resume_point(self, record: RunRecord, journal: RunJournal) -> tuple[list[Message], Resume]:
        """The history and the loop's starting point of a resumed run."""
        session = await self.sessions.get(record.session_id)
        history = await self.sessions.history(session)
        state = record.state
        round_data = state.get("round")
        tail = history[len(history) - journal.tail:] if journal.tail else []
        steps = _steps_from(tail, state.get("steps", []))
        return history, Resume(steps=steps, usage=journal.usage,
                               round=round_from_json(round_data) if round_data else None)

    async def _settle(
        self,
        run: Run,
        agent: Agent,
        journal: RunJournal,
        done: Done | None,
        started: float,
        history: list[Message] | None,
    ) -> None:
        """End the run: hand it over, or store `done` with the outcome and
        publish it; release the session; bookkeeping."""
        if history is not None and any(m.auto_injected for m in history):
            history = [m for m in history if not m.auto_injected]  # recall is never stored
        try:
            if done is None:
                await self._release(run, journal)
                return
            recorded = run.done_event(done)
            response = done.response
            try:
                session = await journal.finish(
                    recorded, stop_reason=response.stop_reason.value, error=response.error,
                    usage=response.usage, iterations=response.iterations,
                    uptime_s=time.monotonic() - started,
                )
            except PilothouseError as exc:
                log.error("run %s: storing its end failed: %s", run.id, exc.message)
                self.sessions.forget(run.session_id)
                response = dataclasses.replace(
                    response, stop_reason=StopReason.ERROR,
                    error=f"storing the run's end failed: {exc.message}",
                )
                recorded = dataclasses.replace(recorded, event=Done(response))
                session = None
                if not _lease_lost(exc):
                    # Clients learn the outcome now; the store when it is back
                    # (the lease stays renewed meanwhile, so nobody resumes it).
                    self._unsettled[run.id] = run
                    self.spawn(self._settle_later(run, journal, recorded, response),
                               f"settle-{run.id}")
            if session is not None and history is not None:
                self.sessions.remember(session, history)
            run.finish(recorded)
            if (session is not None and history is not None and self.limits.generate_titles
                    and wants_title(session, history)):
                self.spawn(generate_title(self.model, self.store, session, history, agent.config.model),
                           f"title-{run.session_id}")
        finally:
            if self._active.get(run.session_id) is run:
                del self._active[run.session_id]
            self._journals.pop(run.id, None)
            self._after(run, started)

    async def _settle_later(
        self, run: Run, journal: RunJournal, done: RunEvent, response: AgentResponse
    ) -> None:
        """Store the end of a run whose final checkpoint failed, retrying
        until the store takes it (or the lease is lost)."""
        delay = 0.5
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await journal.finish(
                        done, stop_reason=response.stop_reason.value, error=response.error,
                        usage=response.usage, iterations=response.iterations, uptime_s=0.0,
                    )
                    log.info("run %s: its end is stored now", run.id)
                    return
                except PilothouseError as exc:
                    if _lease_lost(exc):
                        return
                    delay = min(delay * 2, 5.0)
        finally:
            self._unsettled.pop(run.id, None)

    async def _release(self, run: Run, journal: RunJournal) -> None:
        """Hand the run over: its state stored, its lease released."""
        try:
            await journal.hand_over()
            log.info("run %s on session %s: handed over", run.id, run.session_id)
        except PilothouseError as exc:
            log.warning("run %s: handover not stored (it resumes when its lease expires): %s",
                        run.id, exc.message)
        run.release()

    def _after(self, run: Run, started: float) -> None:
        """Bookkeeping once a run has ended here: memory retention,
        idleness, observers and the run's log line."""
        loop = asyncio.get_running_loop()
        # The timer holds the id only: a run evicted below is freed at once.
        loop.call_later(self.limits.event_retention_s, self._forget_run_id, run.id)
        self._finished[run.id] = run
        while len(self._finished) > self.limits.finished_runs_kept:
            _, oldest = self._finished.popitem(last=False)
            self._forget_run(oldest)
        if not self._active and not any(self._queued.values()):
            self._idle.set()
        response = run.response
        if response is None:
            return  # handed over
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

    async def _preprocess(self, session: SessionRecord, run: Run) -> str:
        """The run's user message as the `preprocess` hooks make it."""
        return await self.hooks.bind(_session_info(session, run)).preprocess(run.content)

    def _forget_run(self, run: Run) -> None:
        self._finished.pop(run.id, None)
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    def _forget_run_id(self, run_id: str) -> None:
        run = self._finished.get(run_id)
        if run is not None:
            self._forget_run(run)

    async def _remember_approval(self, session_id: str, tool: str) -> None:
        try:
            await self.store.add_approved_tool(session_id, tool)
        except PilothouseError as exc:
            log.warning("session %s: could not store approval of %s: %s", session_id, tool, exc.message)

    # --- runs of this process ------------------------------------------------------

    def local(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def active(self, session_id: str) -> Run | None:
        """The session's running run in this process, if any."""
        return self._active.get(session_id)

    def current(self, session_id: str) -> Run | None:
        """The session's active run here, else its next queued run."""
        return self._active.get(session_id) or next(iter(self._queued.get(session_id, ())), None)

    def queued(self, session_id: str) -> list[Run]:
        return list(self._queued.get(session_id, ()))

    def session_runs(self, session_id: str) -> list[Run]:
        """The session's active and queued runs here."""
        return [r for r in [self._active.get(session_id), *self._queued.get(session_id, ())] if r]

    def journal_of(self, run_id: str) -> RunJournal | None:
        return self._journals.get(run_id)


def _session_info(session: SessionRecord, run: Run) -> SessionInfo:
    return SessionInfo(session.id, session.agent, session.created_by, run.id, run.sender)
def check_agent_access(agent: Agent, caller: Principal | None) -> None:
    """PERMISSION_DENIED (AGENT_NOT_ALLOWED) when the agent restricts who may
    run it and `caller` is none of them (admins always may)."""
    config = agent.config
    if caller is None or caller.is_admin or not (config.allowed_principals or config.allowed_roles):
        return
    if caller.id in config.allowed_principals or caller.has_any(config.allowed_roles):
        return
    raise PermissionDeniedError(
        f"agent {agent.name!r} may not be run by this principal",
        reason="AGENT_NOT_ALLOWED",
        metadata={"agent": agent.name},
    )


def _key_reused(session_id: str, run_id: str, key: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"idempotency key {key!r} was used on session {session_id!r} for another message",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"session_id": session_id, "run_id": run_id},
    )


def _lease_lost(exc: PilothouseError) -> bool:
    return isinstance(exc, FailedPreconditionError) and exc.reason == "LEASE_LOST"


def _error_done(agent: Agent, error: str, usage: Usage) -> Done:
    return Done(AgentResponse("", 0, StopReason.ERROR, [], agent.config.model, error=error, usage=usage))


def _steps_from(tail: list[Message], metas: list[dict[str, Any]]) -> list[AgentStep]:
    """The completed rounds of a run, from its messages at the end of the
    history and the steps' metadata in its checkpoint state."""
    rounds: list[tuple[Message, list[Message]]] = []
    for message in tail:
        if message.role is Role.ASSISTANT:
            rounds.append((message, []))
        elif message.role is Role.TOOL and rounds:
            rounds[-1][1].append(message)
    missing = max(len(metas) - len(rounds), 0)  # rounds from before a compaction
    rounds = [(Message(Role.ASSISTANT, ""), [])] * missing + rounds
    steps: list[AgentStep] = []
    for (message, tools), meta in zip(rounds, metas, strict=False):
        usage = Usage(**meta.get("usage", {}))
        results = [ToolResult(t.tool_call_id, t.name, output=t.content) for t in tools]
        steps.append(AgentStep(message, usage, meta.get("finish_reason", ""),
                               list(message.tool_calls), results))
    return steps
