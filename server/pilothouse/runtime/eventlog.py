"""The event log of a run: its events, numbered without gaps, kept in
memory and fanned out live to every subscriber (the RPCs streaming the
run), each reading from any sequence, optionally with deltas merged when
it falls behind. Events older than what memory keeps come from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

from pilothouse.errors import OutOfRangeError, PilothouseError
from pilothouse.runtime.events import Event, Heartbeat, RunEvent, TextDelta, ThinkingDelta

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
        self, after_sequence: int = 0, heartbeat_s: float | None = None,
        *, merge_deltas: bool = False,
    ) -> AsyncIterator[RunEvent]:
        """Every event with sequence > `after_sequence`, then live ones,
        until the log is closed. With `heartbeat_s`, a `Heartbeat` (carrying
        the last sequence sent, not logged) is yielded after each quiet
        interval. With `merge_deltas`, the text (or thinking) deltas that
        are waiting when the subscriber asks for its next event are yielded
        as one (`merge_deltas_at`): a subscriber that falls behind catches up
        in fewer, larger events. Raises OutOfRangeError (see
        `check_position`), and the close error after the last event."""
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
                if merge_deltas:
                    event, end = merge_deltas_at(self._events, sent + 1 - self._first)
                    sent = self._first + end - 1
                else:
                    event = self._events[sent + 1 - self._first]
                    sent += 1
                yield event
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            if not await self._wait(heartbeat_s):
                yield RunEvent(self.session_id, self.run_id, sent, time.time(), Heartbeat())


#: The events `merge_deltas` merges: consecutive ones of the same kind.
_DELTAS = (TextDelta, ThinkingDelta)


def merge_deltas_at(events: Sequence[RunEvent], index: int) -> tuple[RunEvent, int]:
    """The event at `index`, merged with the deltas of its kind that follow
    it when it is a text or thinking delta (their texts joined, with the
    sequence and time of the last); and the index after the last event it
    stands for."""
    first = events[index]
    kind = type(first.event)
    end = index + 1
    if kind not in _DELTAS:
        return first, end
    while end < len(events) and type(events[end].event) is kind:
        end += 1
    if end == index + 1:
        return first, end
    last = events[end - 1]
    text = "".join(e.event.text for e in events[index:end])  # type: ignore[union-attr]
    return RunEvent(last.session_id, last.run_id, last.sequence, last.time, kind(text)), end


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
