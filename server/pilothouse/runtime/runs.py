"""Runs and their event logs.

A run owns the agent loop for one user message on one session. It is its
own asyncio task and appends every event to its `EventLog`; RPCs subscribe
to the log from any sequence number, so losing a subscriber never stops the
run (DESIGN.md, "Runs live apart from the RPC"). Commands (steering,
cancellation, decisions) reach it through its `RunControl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from enum import StrEnum

from pilothouse.errors import OutOfRangeError
from pilothouse.runtime.control import RunControl, RunOptions
from pilothouse.runtime.events import AgentResponse, Done, Event, Heartbeat, RunEvent, UserSteered


class EventLog:
    """Append-only events of one run, numbered from 1, with live fan-out.

    Subscribers read from the shared list; an append wakes the subscribers
    that wait (one future each, made only when one waits), so fan-out costs
    no per-subscriber queue and an append with nobody waiting costs nothing
    more than the list append. After
    the run, `trim` drops everything but the last event (`done`), so late
    re-attaches still learn the outcome.
    """

    __slots__ = ("_closed", "_events", "_first", "_waiters", "run_id", "session_id")

    def __init__(self, session_id: str, run_id: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self._events: list[RunEvent] = []
        self._first = 1  # sequence of self._events[0]
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_sequence(self) -> int:
        return self._first + len(self._events) - 1

    @property
    def first_sequence(self) -> int:
        """The oldest sequence still kept."""
        return self._first

    def append(self, event: Event) -> RunEvent:
        if self._closed:
            raise RuntimeError("event log is closed")
        recorded = RunEvent(self.session_id, self.run_id, self.last_sequence + 1, time.time(), event)
        self._events.append(recorded)
        self._wake()
        return recorded

    def close(self) -> None:
        self._closed = True
        self._wake()

    def trim(self) -> None:
        """Keep only the last event."""
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
        """Raise OutOfRangeError when events after `after_sequence` are no
        longer all kept (metadata `oldest_available_sequence`)."""
        if after_sequence + 1 < self._first:
            raise OutOfRangeError(
                f"run {self.run_id}: events after sequence {after_sequence} are no longer kept; "
                f"the oldest kept is {self._first}",
                reason="EVENTS_EXPIRED",
                metadata={
                    "run_id": self.run_id,
                    "oldest_available_sequence": str(self._first),
                },
            )

    async def subscribe(
        self, after_sequence: int = 0, heartbeat_s: float | None = None
    ) -> AsyncIterator[RunEvent]:
        """Every event with sequence > `after_sequence`, then live ones,
        until the log is closed. With `heartbeat_s`, a `Heartbeat` (carrying
        the last sequence sent, not logged) is yielded after each quiet
        interval. Raises OutOfRangeError (see `check_position`)."""
        self.check_position(after_sequence)
        sent = max(after_sequence, 0)
        while True:
            if sent + 1 < self._first:  # trimmed while we were behind
                self.check_position(sent)
            while sent < self.last_sequence:
                event = self._events[sent + 1 - self._first]
                sent += 1
                yield event
            if self._closed:
                return
            if not await self._wait(heartbeat_s):
                yield RunEvent(self.session_id, self.run_id, sent, time.time(), Heartbeat())


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Run:
    """One run: ids, state, event log, control and task."""

    def __init__(
        self,
        run_id: str,
        session_id: str,
        agent: str,
        content: str,
        sender: str,
        options: RunOptions,
    ) -> None:
        self.id = run_id
        self.session_id = session_id
        self.agent = agent
        self.content = content
        self.sender = sender
        self.options = options
        self.created_at = time.time()
        self.state = RunState.QUEUED
        self.log = EventLog(session_id, run_id)
        self.control = RunControl(run_id=run_id, options=options)
        self.response: AgentResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def finish(self, done: Done) -> None:
        """Record the outcome, publish `Done` and close the log. Steering
        that arrived while the run was storing its history is added to
        `unapplied_steering`; steering after this raises."""
        for content, sender in self.control.steering.seal():
            done.response.unapplied_steering.append(UserSteered(content, sender))
        self.response = done.response
        self.state = RunState.FINISHED
        self.log.append(done)
        self.log.close()
        self._finished.set()

    async def wait(self) -> AgentResponse:
        """The run's response, once it has finished."""
        await self._finished.wait()
        assert self.response is not None
        return self.response
