"""Server-Sent Events, parsed by the WHATWG rules, for every provider.

A line ends at CRLF, CR or LF; a UTF-8 byte-order mark at the very start of
the stream is dropped; `data` lines join with LF; a blank line dispatches
the event when it has at least one `data` line (an event with no data, such
as a lone `event: ping`, is not dispatched); `:` starts a comment; `id`
persists; `retry` is parsed and ignored.

The parser is hand-written rather than httpx-sse's, for speed: one model
answer is thousands of one-line `data:` events, and here each costs a few
string operations, with no object and no generator step per line. (httpx-sse
also dispatches events that have no data, which the standard does not.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol

import httpx

#: What the parser yields: (event type, data).
Event = tuple[str, str]

_BOM = "\ufeff"


class SSEParser:
    """Events out of text chunks (see the module docstring)."""

    __slots__ = ("_data", "_event", "_last_id", "_partial", "_retry", "_started", "_trailing_cr")

    def __init__(self) -> None:
        self._partial = ""  # the start of a line whose end has not arrived
        self._trailing_cr = False  # a chunk ended in CR: maybe half of a CRLF
        self._started = False  # some text has been seen (the BOM is behind us)
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        return self._last_id

    def feed(self, text: str) -> list[Event]:
        """`(event type, data)` of the events completed by `text`."""
        if not self._started:
            if not text:
                return []
            self._started = True
            if text[0] == _BOM:
                text = text[1:]
        if self._trailing_cr:
            text = "\r" + text
            self._trailing_cr = False
        if text.endswith("\r"):
            self._trailing_cr = True
            text = text[:-1]
        if not text:
            return []
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        rest = lines.pop()
        if not lines:
            self._partial += rest
            return []
        if self._partial:
            lines[0] = self._partial + lines[0]
        self._partial = rest
        return self._lines(lines)

    def flush(self) -> list[Event]:
        """The events completed by the end of the body (a last line without
        its line break ends there; an event without its blank line is
        dropped, as the standard says)."""
        if not self._partial and not self._trailing_cr:
            return []
        line, self._partial, self._trailing_cr = self._partial, "", False
        return self._lines([line]) if line else []

    def _lines(self, lines: list[str]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                    self._data = []
                self._event, self._retry = "", None
                continue
            if line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
                continue
            if line[0] == ":":
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            elif name == "id":
                if "\0" not in value:
                    self._last_id = value
            elif name == "retry":
                with contextlib.suppress(TypeError, ValueError):
                    self._retry = int(value)
        return events


class TextSource(Protocol):
    """Decoded text of a response body, chunk by chunk; None at the end."""

    def read(self) -> Awaitable[str | None]: ...


class EventStream:
    """The events of a body, one batch per chunk read (one step per network
    read, not per event); ends after the body has ended and the last events
    are flushed. An iterator object rather than a generator, so that
    stopping early leaves the body open (the caller may drain it).

    Events named in `keepalive` (Anthropic's `ping`) are dropped: like
    comments, they do not count as progress against `idle_s`."""

    __slots__ = ("_ended", "_idle_s", "_keepalive", "_parser", "_source")

    def __init__(
        self, source: TextSource, idle_s: float | None = None, keepalive: frozenset[str] = frozenset()
    ) -> None:
        self._source = source
        self._parser = SSEParser()
        self._ended = False
        #: Longest wait for an event while text arrives that holds none
        #: (keep-alive comments or pings for ever): then httpx.ReadTimeout.
        self._idle_s = idle_s
        self._keepalive = keepalive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> list[Event]:
        parser = self._parser
        clock = asyncio.get_running_loop().time
        since = clock()
        while not self._ended:
            if self._idle_s is not None and clock() - since > self._idle_s:
                raise httpx.ReadTimeout(f"no event for {self._idle_s:g}s, only keep-alives")
            text = await self._source.read()
            if text is None:
                self._ended = True
                events = parser.flush()
            else:
                events = parser.feed(text)
            if events and self._keepalive:
                events = [e for e in events if e[0] not in self._keepalive]
            if events:
                return events
        raise StopAsyncIteration


def is_event_stream(content_type: str) -> bool:
    """Whether a Content-Type header names `text/event-stream` (in any
    letter case, with any parameters)."""
    return "text/event-stream" in content_type.lower()
