"""Runs.

A run owns the agent loop for one user message on one session. It is its
own asyncio task and appends every event to its `EventLog`
(`pilothouse.runtime.eventlog`); RPCs subscribe
to the log from any sequence number, so losing a subscriber never stops
the run. Commands (steering, stop requests, decisions) reach it through
its `RunControl`. Handlers use a run through its narrow surface:
`events(after=)`, `stop()`, `steer()`, `decide()` and `result()`.

Every logged event also goes to the run's durable log (see
`pilothouse.runtime.journal`). A run this process does not hold (finished
and forgotten, or owned by a process that is gone) is read from the store
as a `StoredRun`, with the same `events(after=)` and `result()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pilothouse.errors import PilothouseError, UnavailableError
from pilothouse.runtime import eventcodec
from pilothouse.runtime.control import RunControl, RunOptions
from pilothouse.runtime.eventlog import EventLog, OlderEvents, events_expired, past_the_end
from pilothouse.runtime.events import (
    AgentResponse,
    Decision,
    Done,
    Heartbeat,
    RunEvent,
    StopReason,
    UserSteered,
)
from pilothouse.runtime.store.base import RunRecord, RunStatus, SessionStore


class Run:
    """A run this process holds: ids, status, event log, control, task.

    The public surface (for handlers) is `events`, `stop`, `steer`,
    `decide` and `result`; the rest belongs to the scheduler.
    """

    def __init__(
        self,
        run_id: str,
        session_id: str,
        agent: str,
        content: str,
        sender: str,
        options: RunOptions,
        *,
        idempotency_key: str = "",
        created_at: float | None = None,
        attempt: int = 0,
        log: EventLog | None = None,
    ) -> None:
        self.id = run_id
        self.session_id = session_id
        self.agent = agent
        self.content = content
        self.sender = sender
        self.options = options
        self.idempotency_key = idempotency_key
        self.created_at = time.time() if created_at is None else created_at
        self.attempt = attempt
        self.status = RunStatus.QUEUED
        self.log = log or EventLog(session_id, run_id)
        self.control = RunControl(run_id=run_id, options=options)
        self.response: AgentResponse | None = None
        self.task: asyncio.Task[None] | None = None
        #: Set when the run was handed over to another replica.
        self.handed_over = False
        self._finished = asyncio.Event()

    # --- the handlers' surface -------------------------------------------------

    def events(
        self, after: int = 0, heartbeat_s: float | None = None, *, merge_deltas: bool = False
    ) -> AsyncIterator[RunEvent]:
        """The run's events after sequence `after`, then live ones, until
        `done` (see `EventLog.subscribe`)."""
        return self.log.subscribe(after, heartbeat_s, merge_deltas=merge_deltas)

    def check_position(self, after: int) -> None:
        self.log.check_position(after)

    def stop(self, reason: StopReason, message: str = "") -> bool:
        """Ask the run to stop; False if a stop was already requested."""
        return self.control.request_stop(reason, message)

    def steer(self, content: str, sender: str = "") -> None:
        """Queue steering content. FAILED_PRECONDITION (RUN_FINISHED) once
        the run has finished."""
        self.control.steering.put(content, sender)

    def decide(self, decision: Decision) -> None:
        """Answer a pending request. NOT_FOUND (DECISION_NOT_PENDING) or
        INVALID_ARGUMENT, see `RunControl.decide`."""
        self.control.decide(decision)

    async def result(self) -> AgentResponse:
        """The run's response, once it has finished. UNAVAILABLE when the
        run was handed over to another replica meanwhile."""
        await self._finished.wait()
        if self.response is None:
            raise handed_over(self)
        return self.response

    # --- the scheduler's side ----------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def finish(self, done: RunEvent) -> None:
        """Record the outcome, publish `done` (already stored) and close
        the log."""
        assert isinstance(done.event, Done)
        self.response = done.event.response
        self.status = RunStatus.FINISHED
        self.log.publish(done)
        self.log.close()
        self._finished.set()

    def done_event(self, done: Done) -> RunEvent:
        """`done` as the next event, with the steering that arrived while
        the run stored its history added to `unapplied_steering`; steering
        after this raises."""
        for content, sender in self.control.steering.seal():
            done.response.unapplied_steering.append(UserSteered(content, sender))
        return self.log.next_event(done)

    def release(self) -> None:
        """The run was handed over: its subscribers are told to re-attach."""
        self.handed_over = True
        self.control.steering.seal()
        self.log.close(handed_over(self))
        self._finished.set()

    async def wait(self) -> AgentResponse | None:
        """Until the run has finished or was handed over; its response or
        None."""
        await self._finished.wait()
        return self.response


def handed_over(run: Run) -> PilothouseError:
    return UnavailableError(
        f"run {run.id} moved to another replica while this one shuts down; "
        "re-attach from the last sequence seen",
        reason="RUN_HANDED_OVER",
        metadata={"session_id": run.session_id, "run_id": run.id},
    )


@dataclass(slots=True)
class StoredRun:
    """A run read from the store: finished, or held by a process that is
    gone and waiting to be resumed. `events` polls the store while the run
    has not ended."""

    record: RunRecord
    store: SessionStore
    poll_s: float = 0.25
    page: int = 500

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def session_id(self) -> str:
        return self.record.session_id

    def check_position(self, after: int) -> None:
        if self.record.status.ended and after > self.record.last_sequence:
            raise past_the_end(self.id, self.record.last_sequence)

    async def events(
        self, after: int = 0, heartbeat_s: float | None = None, *, merge_deltas: bool = False
    ) -> AsyncIterator[RunEvent]:
        """Stored events after `after`, in order and without gaps, until
        `done`; while the run goes on elsewhere, new ones as they are
        stored (heartbeats in between). `merge_deltas` is accepted and
        ignored: stored events are sent as they were logged."""
        self.check_position(after)
        sent = max(after, 0)
        quiet_since = time.monotonic()
        while True:
            page = await self.store.list_events(self.id, sent, self.page)
            if page and page[0].sequence != sent + 1 and self.record.status.ended:
                raise events_expired(self.id, page[0].sequence)  # pruned
            for stored in page:
                if stored.sequence != sent + 1:
                    break  # a batch still being written: come back for it
                recorded = eventcodec.decode(stored, self.session_id)
                sent = stored.sequence
                quiet_since = time.monotonic()
                yield recorded
                if isinstance(recorded.event, Done):
                    return
            if len(page) >= self.page:
                continue
            record = await self.store.get_run(self.id)
            if record is not None:
                self.record = record
            if self.record.status.ended and sent >= self.record.last_sequence:
                return
            if heartbeat_s is not None and time.monotonic() - quiet_since >= heartbeat_s:
                quiet_since = time.monotonic()
                yield RunEvent(self.session_id, self.id, sent, time.time(), Heartbeat())
            await asyncio.sleep(self.poll_s if heartbeat_s is None else min(self.poll_s, heartbeat_s))

    async def result(self) -> AgentResponse:
        """The run's response once it has ended (read from its `done`)."""
        last: AgentResponse | None = None
        async for recorded in self.events(max(self.record.last_sequence - 1, 0)):
            if isinstance(recorded.event, Done):
                last = recorded.event.response
        if last is None:
            last = response_of(self.record)
        return last


def response_of(record: RunRecord) -> AgentResponse:
    """The outcome a run record tells, for a run whose `done` is gone."""
    try:
        stop = StopReason(record.stop_reason)
    except ValueError:
        stop = StopReason.INTERRUPTED
    return AgentResponse("", record.iterations, stop, [], record.agent_config.get("model", ""),
                         error=record.error, usage=record.usage)


#: What the scheduler calls for older events of a resumed run's log.
def stored_events_loader(store: SessionStore, session_id: str, run_id: str) -> OlderEvents:
    async def older(after: int, upto: int) -> AsyncIterator[RunEvent]:
        sent = after
        while sent < upto:
            page = await store.list_events(run_id, sent, min(500, upto - sent))
            if not page:
                return
            for stored in page:
                if stored.sequence != sent + 1 or stored.sequence > upto:
                    return
                sent = stored.sequence
                yield eventcodec.decode(stored, session_id)

    return older

