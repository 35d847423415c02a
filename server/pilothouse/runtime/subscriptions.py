"""Subscriptions to every run's events (SubscribeEvents).

Events are durable in the store, so a subscription follows the store's
event feed (`pilothouse.runtime.store.feed`): that works for the runs of
every replica sharing the store, and a cursor (a feed position) resumes it
anywhere, after restarts too. Runs never wait for subscribers: they write
their events as they always do, and subscribers read them back.

One `EventFeed` per process reads the feed for all of its live
subscribers (one store query per poll, whatever their number) while any
is connected, and hands each the events its filter matches. This replica's
event writes wake it at once (`wake`); the runs of other replicas are seen
at the next poll. A subscriber starting from an older position reads the
store on its own until it has caught up, then joins.

Every subscriber has a bounded buffer of `buffer` events. The shared
reader reads at most half a buffer at a time and, while a subscriber's
buffer is more than half full, waits for it to drain, for at most
`stall_s`: a subscriber that keeps up is never dropped by a burst (a
backlog of other replicas' events, many runs at once), and one that does
not keep up delays the others by at most that long. A subscriber whose
buffer would overflow is dropped with RESOURCE_EXHAUSTED (reason
SUBSCRIBER_TOO_SLOW) carrying the cursor of the last event it was given,
to resume from; nothing is buffered without bound, and runs never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pilothouse.errors import PilothouseError, ResourceExhaustedError
from pilothouse.runtime import eventcodec
from pilothouse.runtime.events import RunEvent
from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.feed import FEED_START, FeedEvent, FeedFilter, FeedPosition

log = logging.getLogger(__name__)

#: Events one store read returns at most.
DEFAULT_PAGE = 500
#: Events a subscriber may fall behind by before it is dropped.
DEFAULT_BUFFER = 1024
#: Seconds the shared reader waits for a subscriber to drain its buffer.
DEFAULT_STALL_S = 1.0


@dataclass(frozen=True, slots=True)
class FeedItem:
    """What a subscriber receives: an event with its feed position, the
    agent that ran it and its session's `created_by`; or, with `event`
    None, a heartbeat whose `position` is where to resume."""

    position: FeedPosition
    event: RunEvent | None
    agent: str = ""
    created_by: str = ""


def too_slow(position: FeedPosition, buffer: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the subscriber fell more than {buffer} events behind and was dropped; "
        "resubscribe with the cursor in this error's metadata",
        reason="SUBSCRIBER_TOO_SLOW",
        metadata={"cursor": position.encode(), "buffer": str(buffer)},
    )


class _Subscriber:
    __slots__ = ("buffer", "drained", "feed_filter", "items", "overflowed", "wakeup")

    def __init__(self, feed_filter: FeedFilter, buffer: int, drained: asyncio.Event) -> None:
        self.feed_filter = feed_filter
        self.buffer = buffer
        self.items: deque[FeedItem] = deque()
        self.overflowed = False
        self.wakeup = asyncio.Event()
        #: The feed's: set when a subscriber's buffer falls to half.
        self.drained = drained

    @property
    def backed_up(self) -> bool:
        return len(self.items) > self.buffer // 2

    def push(self, item: FeedItem) -> bool:
        """Queue `item`; False (and the subscriber marked overflowed) when
        its buffer is full."""
        if len(self.items) >= self.buffer:
            self.overflowed = True
            self.items.clear()
            self.wakeup.set()
            return False
        self.items.append(item)
        self.wakeup.set()
        return True

    def pop(self) -> FeedItem:
        item = self.items.popleft()
        if len(self.items) == self.buffer // 2:
            self.drained.set()
        return item


def _decode(event: FeedEvent) -> FeedItem | None:
    try:
        recorded = eventcodec.decode(event.stored, event.session_id)
    except eventcodec.EventDecodeError as exc:  # a newer replica's event kind
        log.warning("event feed: skipping an event that does not decode: %s", exc)
        return None
    return FeedItem(event.position, recorded, event.agent, event.created_by)


class EventFeed:
    """The process's reader of the store's event feed (see the module
    docstring). Seconds for `poll_s`, events for `page` and `buffer`."""

    def __init__(
        self,
        store: SessionStore,
        *,
        poll_s: float = 0.25,
        page: int = DEFAULT_PAGE,
        buffer: int = DEFAULT_BUFFER,
        stall_s: float = DEFAULT_STALL_S,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        # A page fits in the half of a buffer the reader leaves free.
        self.page = max(min(page, buffer // 2), 1)
        self.buffer = buffer
        self.stall_s = stall_s
        self._drained = asyncio.Event()
        self._subscribers: set[_Subscriber] = set()
        self._position = FEED_START
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def wake(self) -> None:
        """Events were stored in this process: read the feed now."""
        if self._task is not None:
            self._wakeup.set()

    async def head(self) -> FeedPosition:
        """The position of "now": reading after it gives only events stored
        later (a read of no events returns the read's horizon)."""
        return (await self.store.read_feed(FEED_START, 0)).position

    async def subscribe(
        self,
        feed_filter: FeedFilter,
        after: FeedPosition | None,
        *,
        heartbeat_s: float | None = None,
    ) -> AsyncIterator[FeedItem]:
        """The events matching `feed_filter` after `after` (None: live), in
        feed order, without end; a heartbeat item after each quiet
        `heartbeat_s`. Raises ResourceExhaustedError (SUBSCRIBER_TOO_SLOW)
        when the caller falls behind (see the module docstring), and the
        store's UnavailableError while catching up."""
        position = after if after is not None else await self.head()
        # Catch up on our own, until a read comes back short.
        while True:
            page = await self.store.read_feed(position, self.page, feed_filter)
            for event in page.events:
                item = _decode(event)
                if item is not None:
                    yield item
            position = page.position
            if len(page.events) < self.page:
                break
        subscriber = _Subscriber(feed_filter, self.buffer, self._drained)
        joined_at = self._join(subscriber, position)
        try:
            # The shared reader was already past us: read the gap, bounded.
            while joined_at > position:
                page = await self.store.read_feed(position, self.page, feed_filter, upto=joined_at)
                for event in page.events:
                    item = _decode(event)
                    if item is not None:
                        yield item
                position = page.position
                if len(page.events) < self.page:
                    position = joined_at
            quiet_since = time.monotonic()
            while True:
                if subscriber.overflowed:
                    raise too_slow(position, self.buffer)
                if subscriber.items:
                    item = subscriber.pop()
                    if item.position <= position:
                        continue  # the shared reader was behind us
                    position = item.position
                    quiet_since = time.monotonic()
                    yield item
                    continue
                subscriber.wakeup.clear()
                timeout = None
                if heartbeat_s is not None:
                    timeout = max(heartbeat_s - (time.monotonic() - quiet_since), 0.0)
                woken = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await subscriber.wakeup.wait()
                        woken = True
                if not woken and not subscriber.items and not subscriber.overflowed:
                    # Nothing matched up to where the shared reader is.
                    position = max(position, self._position)
                    quiet_since = time.monotonic()
                    yield FeedItem(position, None)
        finally:
            self._leave(subscriber)

    # --- the shared reader ---------------------------------------------------------

    def _join(self, subscriber: _Subscriber, position: FeedPosition) -> FeedPosition:
        """Add a subscriber that has read up to `position`; returns where
        the shared reader is (it gets every event after that)."""
        if self._task is None:
            self._position = position
            self._task = asyncio.create_task(self._read(), name="event-feed")
        self._subscribers.add(subscriber)
        return self._position

    def _leave(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _read(self) -> None:
        delay = self.poll_s
        while self._subscribers:
            self._wakeup.clear()
            try:
                page = await self.store.read_feed(self._position, self.page)
            except PilothouseError as exc:
                log.warning("event feed: reading the store failed: %s", exc.message)
                delay = min(delay * 2, 5.0)
                await asyncio.sleep(delay)
                continue
            delay = self.poll_s
            for event in page.events:
                interested = [s for s in self._subscribers if s.feed_filter.matches(event)]
                if not interested:
                    continue
                item = _decode(event)
                if item is None:
                    continue
                for subscriber in interested:
                    if not subscriber.push(item):
                        self._subscribers.discard(subscriber)
            self._position = page.position
            await self._wait_for_laggards()
            if len(page.events) >= self.page:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wakeup.wait()

    async def _wait_for_laggards(self) -> None:
        """While a subscriber's buffer is more than half full, wait for it
        to drain, for at most `stall_s` in all."""
        deadline = time.monotonic() + self.stall_s
        while any(s.backed_up for s in self._subscribers):
            self._drained.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._drained.wait()
