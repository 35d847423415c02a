"""Runs and their event logs.

A run owns the agent loop for one user message on one session. It is its
own asyncio task and appends every event to its `EventLog`; RPCs subscribe
to the log from any sequence number, so losing a subscriber never stops the
run (DESIGN.md, "Runs live apart from the RPC").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from pilothouse.errors import FailedPreconditionError
from pilothouse.runtime.events import AgentResponse, Done, Event, RunEvent
from pilothouse.runtime.loop import SteeringInbox


class EventLog:
    """Append-only events of one run, numbered from 1, with live fan-out.

    Subscribers read from the shared list; an append wakes them through one
    future per "generation", so fan-out costs no per-subscriber queue.
    """

    __slots__ = ("_closed", "_events", "_wakeup", "run_id", "session_id")

    def __init__(self, session_id: str, run_id: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self._events: list[RunEvent] = []
        self._closed = False
        self._wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_sequence(self) -> int:
        return len(self._events)

    def append(self, event: Event) -> RunEvent:
        if self._closed:
            raise RuntimeError("event log is closed")
        recorded = RunEvent(self.session_id, self.run_id, len(self._events) + 1, time.time(), event)
        self._events.append(recorded)
        self._wake()
        return recorded

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = asyncio.get_running_loop().create_future()

    async def subscribe(self, after_sequence: int = 0) -> AsyncIterator[RunEvent]:
        """Every event with sequence > `after_sequence`, then live ones,
        until the log is closed."""
        index = max(after_sequence, 0)
        while True:
            while index < len(self._events):
                yield self._events[index]
                index += 1
            if self._closed:
                return
            await asyncio.shield(self._wakeup)


class Run:
    """One run: its id, session, event log, steering inbox and task."""

    def __init__(self, run_id: str, session_id: str, agent: str, sender: str) -> None:
        self.id = run_id
        self.session_id = session_id
        self.agent = agent
        self.sender = sender
        self.started_at = time.time()
        self.log = EventLog(session_id, run_id)
        self.steering = SteeringInbox()
        self.response: AgentResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def steer(self, content: str, sender: str = "") -> None:
        """Queue steering content for the next model round. Raises
        FailedPreconditionError if the run has finished."""
        if self.finished:
            raise FailedPreconditionError(
                f"run {self.id} has finished; steering was not applied",
                reason="RUN_FINISHED",
                metadata={"run_id": self.id, "session_id": self.session_id},
            )
        self.steering.put(content, sender)

    def finish(self, done: Done) -> None:
        """Record the outcome, publish `Done` and close the log."""
        self.response = done.response
        self.log.append(done)
        self.log.close()
        self._finished.set()

    async def wait(self) -> AgentResponse:
        """The run's response, once it has finished."""
        await self._finished.wait()
        assert self.response is not None
        return self.response
