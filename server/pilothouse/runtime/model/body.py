"""Reading a 2xx model response body: UTF-8 text chunk by chunk under the
first-byte and idle limits (one watchdog timer per stream, not a timeout
object per read), and the end of a body read after the protocol's end."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

#: Longest a body is read after the protocol's end (`[DONE]`,
#: `message_stop`), in seconds, in the background: reading it lets httpx
#: return the connection to its pool; one left unread makes it close the
#: connection, so every round would open a new one. The round itself does
#: not wait for it.
DRAIN_SECONDS = 1.0


class Watchdog:
    """Cancels the task awaiting a read that passes its limit.

    One timer serves the whole stream and is re-armed only when it fires
    (a read pending past its deadline is cut; otherwise it is set again
    for the current deadline), instead of a timeout object per read: a
    model answer is thousands of reads. `arm(seconds)` before a read,
    `disarm()` after it; `expired()` tells, in the `CancelledError`
    handler, whether the watchdog (and nothing else) cancelled the read.
    """

    __slots__ = ("_cancelling", "_deadline", "_handle", "_loop", "_task", "fired")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._deadline = 0.0
        self._cancelling = 0
        self.fired = False

    def arm(self, seconds: float) -> None:
        self._deadline = deadline = self._loop.time() + seconds
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        handle = self._handle
        if handle is None:
            self._handle = self._loop.call_at(deadline, self._check)
        elif handle.when() > deadline:  # a shorter limit than the timer's
            handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        self._task = None

    def expired(self) -> bool:
        """True (once) when the watchdog's cancellation is the only one."""
        task = self._task
        if not self.fired or task is None:
            return False
        self.fired = False
        return task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if task is None:
            return  # no read pending: the next arm() sets the timer again
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        self.fired = True
        task.cancel()


class Body:
    """A 2xx response body as UTF-8 text, chunk by chunk (`read()`: None at
    the end), under the first-byte and idle limits.

    `started` turns true with the first bytes; a decoder sets `finished`
    when it has seen the protocol's end, so that the rest of the body is
    read in the background instead of the connection being closed.
    `provider` names the provider for error texts.
    """

    __slots__ = (
        "_chunks",
        "_decoder",
        "_ended",
        "_first_s",
        "_idle_s",
        "_watch",
        "event_idle_s",
        "finished",
        "provider",
        "response",
        "started",
    )

    def __init__(
        self,
        response: httpx.Response,
        provider: str,
        watch: Watchdog | None = None,
        first_byte_s: float | None = None,
        idle_s: float | None = None,
        event_idle_s: float | None = None,
    ) -> None:
        self.response = response
        #: Longest time without an event (SSE comments reset the byte limits
        #: but are not events); None: no limit.
        self.event_idle_s = event_idle_s
        self.provider = provider
        self.started = False
        self.finished = False
        # httpx annotates aiter_bytes() as an AsyncIterator; it is an async
        # generator, which close() finalizes.
        self._chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._ended = False
        self._watch = watch
        self._first_s = first_byte_s
        self._idle_s = idle_s

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "")

    async def read(self) -> str | None:
        """The next decoded text (possibly ""), or None at the end. Raises
        httpx errors; a passed first-byte or idle limit is an
        `httpx.ReadTimeout`."""
        if self._ended:
            return None
        watch = self._watch
        limit = (self._idle_s if self.started else self._first_s) if watch is not None else None
        try:
            if limit is None:
                data = await self._chunks.__anext__()
            else:
                assert watch is not None
                watch.arm(limit)
                try:
                    data = await self._chunks.__anext__()
                except asyncio.CancelledError:
                    if watch.expired():
                        raise httpx.ReadTimeout(f"no data for {limit:g}s") from None
                    raise
                finally:
                    watch.disarm()
        except StopAsyncIteration:
            self._ended = True
            tail = self._decoder.decode(b"", True)
            return tail or None
        self.started = True
        return self._decoder.decode(data)

    async def text(self) -> str:
        """The rest of the body as one string."""
        parts = []
        while (part := await self.read()) is not None:
            parts.append(part)
        return "".join(parts)

    async def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Read what is left (for at most `seconds`), then close."""
        try:
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(seconds):
                    async for _ in self._chunks:
                        pass
        finally:
            await self.close()

    async def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._chunks.aclose()
        await self.response.aclose()


class Guard:
    """`async with Guard(watch, seconds)`: the watchdog over one await
    (sending the request); its expiry is an `httpx.ReadTimeout`."""

    __slots__ = ("_seconds", "_watch")

    def __init__(self, watch: Watchdog | None, seconds: float | None) -> None:
        self._watch = watch if seconds is not None else None
        self._seconds = seconds

    async def __aenter__(self) -> None:
        if self._watch is not None:
            self._watch.arm(self._seconds)  # type: ignore[arg-type]

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        watch = self._watch
        if watch is None:
            return
        try:
            if exc_type is asyncio.CancelledError and watch.expired():
                raise httpx.ReadTimeout(f"no response for {self._seconds:g}s") from None
        finally:
            watch.disarm()
