"""The execution of a run: wait for its turn when it is queued, drive the
agent loop, and end it whatever happens — `done` published after the final
checkpoint (or the run handed over), the session released, the end stored
later when the store is down.

`RunExecutor` also makes the parts a run is built from (its `Run`, durable
event log and journal), for admission and takeover alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any

from pilothouse.errors import FailedPreconditionError, PilothouseError
from pilothouse.runtime import eventcodec, spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.control import RunOptions
from pilothouse.runtime.eventcodec import decode_value
from pilothouse.runtime.eventlog import EventLog
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    Done,
    RunEvent,
    RunStarted,
    StopReason,
    ToolResult,
)
from pilothouse.runtime.hookchain import NO_HOOKS, HookChain
from pilothouse.runtime.hooks import SessionInfo
from pilothouse.runtime.journal import EventWriter, RunJournal
from pilothouse.runtime.limits import RuntimeLimits
from pilothouse.runtime.loop import LoopContext, Resume, run_agent
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.runmetrics import NO_METRICS, RunMetrics
from pilothouse.runtime.runs import Run, stored_events_loader
from pilothouse.runtime.runtable import RunTable
from pilothouse.runtime.sessions import SessionLocks, Sessions
from pilothouse.runtime.store.base import (
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionStore,
)
from pilothouse.runtime.titles import generate_title, wants_title
from pilothouse.runtime.toolphase import round_from_json
from pilothouse.runtime.tools import ToolDispatcher

log = logging.getLogger("pilothouse.runtime.scheduler")


class RunExecutor:
    """Runs the runs of this replica (see the module docstring)."""

    def __init__(
        self,
        *,
        model: ChatModel,
        dispatcher: ToolDispatcher,
        store: SessionStore,
        sessions: Sessions,
        locks: SessionLocks,
        limits: RuntimeLimits,
        table: RunTable,
    ) -> None:
        self.model = model
        self.dispatcher = dispatcher
        self.store = store
        self.sessions = sessions
        self.locks = locks
        self.limits = limits
        self.table = table
        self.writer = EventWriter(store, limits.event_flush_s)
        #: This replica's gRPC address as other replicas reach it.
        self.address = ""
        #: The hook plugins (see `pilothouse.runtime.hooks`).
        self.hooks: HookChain = NO_HOOKS
        #: Where runs report their measurements (see `pilothouse.runtime.runmetrics`).
        self.metrics: RunMetrics = NO_METRICS
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def owner(self) -> str:
        """This replica's identity as a run owner."""
        return self.address or "local"

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work (titles, settling) that shutdown cancels."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @property
    def background(self) -> set[asyncio.Task[Any]]:
        return self._background

    def start_task(self, run: Run, agent: Agent, journal: RunJournal, **kwargs: Any) -> None:
        """Start the run's task (`execute` with `kwargs`)."""
        run.task = asyncio.create_task(self.execute(run, agent, journal, **kwargs), name=f"run-{run.id}")

    # --- the parts of a run --------------------------------------------------------

    def revive(self, record: RunRecord, *, journalled: bool = True) -> tuple[Run, RunJournal]:
        """The `Run` and journal of a stored run taken over here; its new
        events continue the stored log (recorded by the journal unless not
        `journalled`)."""
        journal_box: list[RunJournal] = []
        sink = (lambda e: journal_box[0].record(e)) if journalled else None
        log_ = self.durable_log(record.id, record.session_id, record.last_sequence + 1, sink)
        run = self.run_of(record, log_)
        journal_box.append(self.journal(run, record))
        return run, journal_box[0]

    def run_of(self, record: RunRecord, log_: EventLog | None = None) -> Run:
        options = decode_value(RunOptions, record.options) if record.options else RunOptions()
        return Run(
            record.id, record.session_id, record.agent, record.content, record.sender, options,
            idempotency_key=record.idempotency_key, created_at=record.created_at,
            attempt=record.attempt, log=log_,
        )

    def journal(self, run: Run, record: RunRecord | None = None) -> RunJournal:
        state = record.state if record is not None else {}
        journal = RunJournal(
            self.store, self.writer, run.session_id, run.id, clock=time.time,
            steps=list(state.get("steps", [])), tail=int(state.get("tail", 1)),
            principal=str(state.get("principal", "")),
            roles=tuple(state.get("roles", ())),
        )
        journal.speaker = run.options.agent  # a guest's answers say who gave them
        journal.owner = self.owner
        self.table.journals[run.id] = journal
        return journal

    def durable_log(self, run_id: str, session_id: str, first: int, journal_sink) -> EventLog:
        log_ = EventLog(
            session_id, run_id, first_sequence=first, sink=journal_sink,
            older=stored_events_loader(self.store, session_id, run_id),
        )
        log_.observer = self.hooks.observer()  # hooks: on_event
        return log_

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
            self.table.dequeue(run)
            if run.control.stop_reason is StopReason.HANDOVER:
                run.release()
            else:
                await self._end_queued(run, journal, run.control.stop_reason or StopReason.CANCELLED,
                                       run.control.stop_message)
            self.table.ended(run, time.monotonic())
            return None
        async with self.locks(run.session_id):
            self.table.dequeue(run)
            user = Message.user(run.content, run.sender)
            try:
                before = await self.sessions.get(run.session_id)
                user.content = await self.preprocess(before, run)  # hooks: preprocess
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
                self.table.ended(run, time.monotonic())
                return None
            self.table.active_by_session[run.session_id] = run
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

    # --- execution -----------------------------------------------------------------

    async def execute(
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
                          principal=journal.principal, principal_roles=journal.roles,
                          metrics=self.metrics)
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
                    self.table.unsettled[run.id] = run
                    self.spawn(self._settle_later(run, journal, recorded, response),
                               f"settle-{run.id}")
            if session is not None and history is not None:
                self.sessions.remember(session, history)
            run.finish(recorded)
            self.metrics.run_ended(agent.name, response.stop_reason.value, time.monotonic() - started)
            if (session is not None and history is not None and self.limits.generate_titles
                    and wants_title(session, history)):
                self.spawn(generate_title(self.model, self.store, session, history, agent.config.model),
                           f"title-{run.session_id}")
        finally:
            self.table.deactivate(run)
            self.table.ended(run, started)

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
            self.table.unsettled.pop(run.id, None)

    async def _release(self, run: Run, journal: RunJournal) -> None:
        """Hand the run over: its state stored, its lease released."""
        try:
            await journal.hand_over()
            log.info("run %s on session %s: handed over", run.id, run.session_id)
        except PilothouseError as exc:
            log.warning("run %s: handover not stored (it resumes when its lease expires): %s",
                        run.id, exc.message)
        run.release()

    async def preprocess(self, session: SessionRecord, run: Run) -> str:
        """The run's user message as the `preprocess` hooks make it."""
        return await self.hooks.bind(_session_info(session, run)).preprocess(run.content)

    async def _remember_approval(self, session_id: str, tool: str) -> None:
        try:
            await self.store.add_approved_tool(session_id, tool)
        except PilothouseError as exc:
            log.warning("session %s: could not store approval of %s: %s", session_id, tool, exc.message)


def _session_info(session: SessionRecord, run: Run) -> SessionInfo:
    return SessionInfo(session.id, session.agent, session.created_by, run.id, run.sender)
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
