"""Runs and their event logs.

A run owns the agent loop for one user message on one session. It is its
own asyncio task and appends every event to its `EventLog`; RPCs subscribe
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
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pilothouse.errors import OutOfRangeError, PilothouseError, UnavailableError
from pilothouse.runtime import eventcodec
from pilothouse.runtime.control import RunControl, RunOptions
from pilothouse.runtime.events import (
    AgentResponse,
    Decision,
    Done,
    Event,
    Heartbeat,
    RunEvent,
    StopReason,
    UserSteered,
)
from pilothouse.runtime.store.base import RunRecord, RunStatus, SessionStore

#: Loads the stored events of a run with sequence in (after, upto].
OlderEvents = Callable[[int, int], AsyncIterator[RunEvent]]


class EventLog:
    """Append-only events of one run, numbered without gaps, with live
    fan-out.

    Subscribers read from the shared list; an append wakes the subscribers
    that wait (one future each, made only when one waits), so fan-out costs
    no per-subscriber queue. `sink` gets every appended event (the durable
    log). A log resumed from a checkpoint starts at `first_sequence`; events
    before it, and events dropped by `trim`, are read through `older`.
    `close(error)` ends every subscription, with `error` raised after the
    last event when given (a handover: the client re-attaches elsewhere).
    `observer`, when set, is called with every event published (the hook
    plugins' `on_event`); it must return at once and never raise.
    """

    __slots__ = (
        "_closed", "_error", "_events", "_first", "_older", "_sink", "_waiters",
        "observer", "run_id", "session_id",
    )

    def __init__(
        self,
        session_id: str,
        run_id: str,
        *,
        first_sequence: int = 1,
        sink: Callable[[RunEvent], None] | None = None,
        older: OlderEvents | None = None,
    ) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self._events: list[RunEvent] = []
        self._first = first_sequence  # sequence of self._events[0]
        self._closed = False
        self._error: PilothouseError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._sink = sink
        self._older = older
        self.observer: Callable[[RunEvent], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_sequence(self) -> int:
        return self._first + len(self._events) - 1

    @property
    def first_sequence(self) -> int:
        """The oldest sequence kept in memory."""
        return self._first

    def next_event(self, event: Event) -> RunEvent:
        """`event` as it will be recorded next (not appended yet)."""
        return RunEvent(self.session_id, self.run_id, self.last_sequence + 1, time.time(), event)

    def append(self, event: Event) -> RunEvent:
        recorded = self.next_event(event)
        self.publish(recorded, sink=True)
        return recorded

    def publish(self, recorded: RunEvent, *, sink: bool = False) -> None:
        """Append an event made by `next_event` (stored already unless
        `sink`)."""
        if self._closed:
            raise RuntimeError("event log is closed")
        if recorded.sequence != self.last_sequence + 1:
            raise RuntimeError(f"event {recorded.sequence} out of order after {self.last_sequence}")
        self._events.append(recorded)
        if sink and self._sink is not None:
            self._sink(recorded)
        self._wake()
        if self.observer is not None:
            self.observer(recorded)

    def close(self, error: PilothouseError | None = None) -> None:
        self._closed = True
        self._error = error
        self._wake()

    def trim(self) -> None:
        """Keep only the last event in memory (older ones are in the store
        when `older` is set)."""
        if len(self._events) > 1:
            self._first += len(self._events) - 1
            self._events = self._events[-1:]

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _wait(self, timeout_s: float | None) -> bool:
        """Wait for the next append or close; False on timeout."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout_s is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def check_position(self, after_sequence: int) -> None:
        """Raise OutOfRangeError when events after `after_sequence` cannot
        be sent: no longer kept (metadata `oldest_available_sequence`), or
        past the end of a closed log (metadata `last_sequence`)."""
        if after_sequence + 1 < self._first and self._older is None:
            raise events_expired(self.run_id, self._first)
        if self._closed and after_sequence > self.last_sequence:
            raise past_the_end(self.run_id, self.last_sequence)

    async def subscribe(
        self, after_sequence: int = 0, heartbeat_s: float | None = None
    ) -> AsyncIterator[RunEvent]:
        """Every event with sequence > `after_sequence`, then live ones,
        until the log is closed. With `heartbeat_s`, a `Heartbeat` (carrying
        the last sequence sent, not logged) is yielded after each quiet
        interval. Raises OutOfRangeError (see `check_position`), and the
        close error after the last event."""
        self.check_position(after_sequence)
        sent = max(after_sequence, 0)
        while True:
            if sent + 1 < self._first:  # older than memory: from the store
                if self._older is None:
                    self.check_position(sent)
                else:
                    async for recorded in self._older(sent, self._first - 1):
                        sent = recorded.sequence
                        yield recorded
                    if sent + 1 < self._first:
                        raise events_expired(self.run_id, sent + 1)
            while sent < self.last_sequence:
                event = self._events[sent + 1 - self._first]
                sent += 1
                yield event
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            if not await self._wait(heartbeat_s):
                yield RunEvent(self.session_id, self.run_id, sent, time.time(), Heartbeat())


def events_expired(run_id: str, oldest: int) -> OutOfRangeError:
    return OutOfRangeError(
        f"run {run_id}: events after sequence {oldest - 1} are no longer kept; "
        f"the oldest kept is {oldest}",
        reason="EVENTS_EXPIRED",
        metadata={"run_id": run_id, "oldest_available_sequence": str(oldest)},
    )


def past_the_end(run_id: str, last: int) -> OutOfRangeError:
    return OutOfRangeError(
        f"run {run_id} has ended at sequence {last}: there is nothing after it",
        reason="SEQUENCE_PAST_END",
        metadata={"run_id": run_id, "last_sequence": str(last)},
    )


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

    def events(self, after: int = 0, heartbeat_s: float | None = None) -> AsyncIterator[RunEvent]:
        """The run's events after sequence `after`, then live ones, until
        `done` (see `EventLog.subscribe`)."""
        return self.log.subscribe(after, heartbeat_s)

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

    async def events(self, after: int = 0, heartbeat_s: float | None = None) -> AsyncIterator[RunEvent]:
        """Stored events after `after`, in order and without gaps, until
        `done`; while the run goes on elsewhere, new ones as they are
        stored (heartbeats in between)."""
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

