"""The run scheduler: admission of new runs, and the lifecycle of this
replica's runs (start, drain, handover, shutdown).

A session has at most one active run across every replica sharing the
store (the store's run lease); what a message does while one is active is
its `ActiveRunPolicy`. Every run is a durable record: the user message is
stored when it begins, each completed round when it ends, its events in
the durable event log (`pilothouse.runtime.journal`).

The scheduler is composed of `RunTable` (this process's runs),
`RunExecutor` (a run's execution, `pilothouse.runtime.execution`) and
`Takeover` (leases, and runs whose process is gone,
`pilothouse.runtime.takeover`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
    run_active,
    session_closed,
)
from pilothouse.identity import Principal
from pilothouse.runtime import eventcodec, spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.agents import AgentRegistry
from pilothouse.runtime.control import ActiveRunPolicy, RunOptions
from pilothouse.runtime.eventcodec import encode_value
from pilothouse.runtime.events import AgentResponse, RunQueued, RunStarted, StopReason
from pilothouse.runtime.execution import RunExecutor
from pilothouse.runtime.hookchain import HookChain
from pilothouse.runtime.journal import EventWriter, RunJournal
from pilothouse.runtime.limits import RuntimeLimits, check_content
from pilothouse.runtime.messages import Message
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.runs import Run
from pilothouse.runtime.runtable import RemoteRun, RunLocation, RunTable
from pilothouse.runtime.sessions import SessionLocks, Sessions
from pilothouse.runtime.store.base import (
    RunRecord,
    RunStatus,
    SessionRecord,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.takeover import Takeover
from pilothouse.runtime.tools import ToolDispatcher


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
        self.store = store
        self.agents = agents
        self.sessions = sessions
        self.locks = locks
        self.limits = limits
        self.table = RunTable(event_retention_s=limits.event_retention_s,
                              finished_runs_kept=limits.finished_runs_kept)
        self.executor = RunExecutor(model=model, dispatcher=dispatcher, store=store,
                                    sessions=sessions, locks=locks, limits=limits, table=self.table)
        self.takeover = Takeover(store=store, agents=agents, limits=limits, table=self.table,
                                 executor=self.executor)
        self._loops: list[asyncio.Task[None]] = []
        self._draining = False
        # Lookups of this process's runs.
        self.local = self.table.local
        self.active = self.table.active
        self.current = self.table.current
        self.queued = self.table.queued
        self.session_runs = self.table.session_runs
        self.journal_of = self.table.journal_of

    # --- wiring --------------------------------------------------------------------

    @property
    def address(self) -> str:
        """This replica's gRPC address as other replicas reach it."""
        return self.executor.address

    @address.setter
    def address(self, value: str) -> None:
        self.executor.address = value

    @property
    def owner(self) -> str:
        """This replica's identity as a run owner."""
        return self.executor.owner

    @property
    def hooks(self) -> HookChain:
        """The hook plugins (see `pilothouse.runtime.hooks`)."""
        return self.executor.hooks

    @hooks.setter
    def hooks(self, value: HookChain) -> None:
        self.executor.hooks = value

    @property
    def writer(self) -> EventWriter:
        return self.executor.writer

    @property
    def on_run_end(self) -> list[Callable[[Run, AgentResponse, float], None]]:
        """Called with (run, response, duration_s) when a run ends."""
        return self.table.on_run_end

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> list[str]:
        """Take over this process's own runs from before a restart and the
        runs whose lease expired, then start renewing leases, polling for
        runs to take over, and writing the event log. Returns the run ids
        taken over."""
        self.writer.start()
        taken = await self.takeover.claim(stale_owner=self.owner)
        self._loops = [
            asyncio.create_task(self.takeover.keep_leases(), name="lease-keeper"),
            asyncio.create_task(self.takeover.poll_claims(), name="run-claimer"),
            asyncio.create_task(self.takeover.prune(), name="event-pruner"),
        ]
        return taken

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Refuse new runs (UNAVAILABLE); active and queued runs go on;
        runs of other replicas are no longer taken over."""
        self._draining = True
        self.takeover.paused = True

    def active_runs(self) -> list[Run]:
        return self.table.unfinished()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is active or queued; False on timeout."""
        return await self.table.wait_idle(timeout_s)

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
        background = self.executor.background
        for task in [*background, *self._loops]:
            task.cancel()
        await asyncio.gather(*background, *self._loops, return_exceptions=True)
        await self.writer.close()
        await self.store.close()

    @property
    def background_idle(self) -> bool:
        """No background work (titles, settling) is pending."""
        return not self.executor.background

    async def claim(self, stale_owner: str = "") -> list[str]:
        """See `Takeover.claim`."""
        return await self.takeover.claim(stale_owner)

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
        `active_run_id`), its agent was replaced (AGENT_REPLACED) or removed
        from the agents file (AGENT_REMOVED). UNAVAILABLE: the server is draining or the store
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
        # The session's own agent: its bound uid and pinned version (see
        # AgentRegistry.for_session).
        agent = (await self.agents.runnable(options.agent, "options.agent")
                 if options.agent else await self.agents.for_session(record))
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
                    await self.takeover.claim()  # its process is gone: resume it here, then apply the policy
                    continue
                if options.if_active is not ActiveRunPolicy.REJECT:
                    latest = await self.store.latest_run(session_id)
                    if latest is not None and latest.owner and latest.owner != self.executor.owner:
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
        local = self.table.local(record.id)
        return local if local is not None else await locate(record)

    def _new_run(
        self, agent: Agent, session_id: str, content: str, sender: str, options: RunOptions,
        idempotency_key: str, caller: Principal | None,
    ) -> tuple[Run, RunRecord, RunJournal]:
        run_id = uuid.uuid4().hex
        journal_box: list[RunJournal] = []
        log_ = self.executor.durable_log(run_id, session_id, 1, lambda e: journal_box[0].record(e))
        run = Run(run_id, session_id, agent.name, content, sender, options,
                  idempotency_key=idempotency_key, log=log_)
        journal = self.executor.journal(run)
        if caller is not None:
            journal.principal, journal.roles = caller.id, tuple(sorted(caller.roles))
        journal_box.append(journal)
        record = RunRecord(
            id=run.id, session_id=session_id, agent=agent.name, content=content,
            created_at=run.created_at, sender=sender, agent_version=agent.version,
            agent_config=agent.config.model_dump(mode="json"),
            options=encode_value(options), idempotency_key=idempotency_key,
            owner=self.executor.owner, state=journal.state(),
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
            current = self.table.active(session_id)
            queue = self.table.queued(session_id)
            busiest = self.table.busiest(session_id)
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
                user.content = await self.executor.preprocess(record, run)  # hooks: preprocess
                after = await self.store.begin_run(
                    session_id, run.id, lease_s=self.limits.lease_s, now=time.time(),
                    messages=[user], new_run=run_record, events=[eventcodec.encode(started)],
                )
            except BaseException:
                self.table.journals.pop(run.id, None)
                raise
            run.log.publish(started)
            history = await self.sessions.history_after(record, after, [user])
            self.table.admit(run)
            self.table.active_by_session[session_id] = run
            run.status = RunStatus.RUNNING
            self.executor.start_task(run, agent, journal, history=history)
        return run, True

    async def _enqueue(
        self, agent: Agent, session_id: str, content: str, sender: str, options: RunOptions,
        idempotency_key: str, after: Run, caller: Principal | None,
    ) -> Run:
        run, record, journal = self._new_run(agent, session_id, content, sender, options,
                                             idempotency_key, caller)
        try:
            await self.store.insert_run(record)
        except BaseException:
            self.table.journals.pop(run.id, None)
            raise
        position = self.table.enqueue(run)
        self.table.admit(run)
        run.log.append(RunQueued(position))
        self.executor.start_task(run, agent, journal, predecessor=after)
        return run


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
