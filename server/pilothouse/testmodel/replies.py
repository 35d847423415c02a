"""What the fake Chat Completions server sends back, and builders for
real-shaped replies.

A responder returns one `Reply` per request: an `SSEReply` (a streamed
body, HTTP 200 by default) or a `JSONReply` (any status with a JSON or raw
body, e.g. a 429 with `Retry-After`).

`SSEReply.events` items are written in order:

* `str` -- a `data:` payload (JSON text or `[DONE]`), written as
  `data: <payload>` plus a blank line. A string that already is an SSE line
  passes through as it is: a `data:` line gets the blank line that ends the
  event; `event:`, `id:`, `retry:` and comment (`:`) lines get a single
  newline, so they belong to the event that follows; `""` is a blank line.
* `dict` -- a JSON payload, serialised and written like a `str` payload.
* `Raw` -- bytes written exactly as given (fixture replay).
* `Delay` -- sleep before the next item.
* `Pause` -- wait until its `asyncio.Event` is set (hold a stream mid-round).
* `Cut` -- drop the connection abruptly, without `[DONE]` or the chunked
  terminator. As the very first item it drops the connection before any
  response headers are sent.

Response headers go out before the first item is processed, except when
that item is a `Cut`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pilothouse.runtime.messages import Usage

DEFAULT_MODEL = "fake-model"


@dataclass(slots=True)
class Pause:
    """Hold the stream until `event` is set."""

    event: asyncio.Event


@dataclass(slots=True)
class Delay:
    """Sleep `seconds` before sending the next item."""

    seconds: float


@dataclass(slots=True)
class Cut:
    """Close the connection abruptly (no `[DONE]`, no clean end of body)."""


@dataclass(slots=True)
class Raw:
    """Bytes written to the body exactly as they are."""

    data: bytes


SSEItem: TypeAlias = str | dict[str, Any] | Raw | Pause | Delay | Cut


@dataclass(slots=True)
class SSEReply:
    """A `text/event-stream` reply; see the module docstring for `events`.

    `headers` are added to (and may override) the default
    `Content-Type: text/event-stream` and `Cache-Control: no-cache`.
    """

    events: list[SSEItem]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, *, delay: float = 0.0) -> SSEReply:
        """Replay a captured SSE body byte for byte.

        The file is sent as one `Raw` item per event (split after each blank
        line, separators kept), optionally with `delay` seconds between
        events, so the client sees the events arrive separately.
        """
        data = Path(path).read_bytes()
        events: list[SSEItem] = []
        for piece in _split_events(data):
            if delay and events:
                events.append(Delay(delay))
            events.append(Raw(piece))
        return cls(events)


@dataclass(slots=True)
class JSONReply:
    """A non-streamed reply: `body` is serialised to JSON, unless it is
    `str` or `bytes`, which are sent as they are (non-JSON error pages,
    byte-exact fixtures). `headers` may override the JSON content type."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(
        cls, path: str | Path, status: int, headers: dict[str, str] | None = None
    ) -> JSONReply:
        """A reply whose body is the file's bytes."""
        return cls(status, Path(path).read_bytes(), dict(headers or {}))


Reply: TypeAlias = SSEReply | JSONReply


def _split_events(data: bytes) -> Iterator[bytes]:
    """Split an SSE body after each blank line, keeping every byte."""
    start = 0
    while start < len(data):
        candidates = [
            i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := data.find(sep, start)) >= 0
        ]
        end = min(candidates) if candidates else len(data)
        yield data[start:end]
        start = end


# --- real-shaped chunk builders ---------------------------------------------------------------


def usage_to_wire(usage: Usage | dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions `usage` object for `usage` (a dict passes as is)."""
    if isinstance(usage, dict):
        return usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChunkFactory:
    """Makes `chat.completion.chunk` payloads sharing one id, creation time
    and model, as a real server does within one response."""

    def __init__(
        self, model: str = DEFAULT_MODEL, *, id: str | None = None, created: int | None = None
    ) -> None:
        self.model = model
        self.id = id or f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time()) if created is None else created

    def chunk(
        self,
        delta: dict[str, Any],
        *,
        finish_reason: str | None = None,
        usage: Usage | dict[str, Any] | None = None,
    ) -> str:
        """One chunk with a single choice (index 0) carrying `delta`."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if usage is not None:
            body["usage"] = usage_to_wire(usage)
        return json.dumps(body)

    def usage_chunk(self, usage: Usage | dict[str, Any]) -> str:
        """The trailing `include_usage` chunk: empty `choices` plus `usage`."""
        return json.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to_wire(usage),
            }
        )

    def role(self, content: str | None = "") -> str:
        """The opening chunk: `role` plus empty content, as OpenAI sends it."""
        return self.chunk({"role": "assistant", "content": content})

    def texts(self, text: str, chunk_size: int, key: str = "content") -> list[str]:
        """`text` split into `chunk_size`-character deltas under `key`."""
        size = max(1, chunk_size)
        return [self.chunk({key: text[i : i + size]}) for i in range(0, len(text), size)]


def _finish(
    factory: ChunkFactory, events: list[SSEItem], reason: str, usage: Usage | dict[str, Any] | None
) -> SSEReply:
    events.append(factory.chunk({}, finish_reason=reason))
    if usage is not None:
        events.append(factory.usage_chunk(usage))
    events.append("[DONE]")
    return SSEReply(events)


def text_reply(
    text: str,
    *,
    model: str = DEFAULT_MODEL,
    chunk_size: int = 4,
    usage: Usage | dict[str, Any] | None = None,
    reasoning: str | None = None,
) -> SSEReply:
    """A streamed text answer: role chunk, optional `reasoning_content`
    deltas, `content` deltas of `chunk_size` characters, a `stop` finish
    chunk, the usage chunk when `usage` is given, and `[DONE]`."""
    f = ChunkFactory(model)
    events: list[SSEItem] = [f.role()]
    if reasoning:
        events += f.texts(reasoning, chunk_size, "reasoning_content")
    events += f.texts(text, chunk_size)
    return _finish(f, events, "stop", usage)


def tool_calls_reply(
    calls: Sequence[tuple[str, str, str]],
    *,
    fragment_size: int | None = 8,
    text: str | None = None,
    model: str = DEFAULT_MODEL,
    usage: Usage | dict[str, Any] | None = None,
    reasoning: str | None = None,
) -> SSEReply:
    """A streamed round calling tools: `calls` are `(id, name,
    arguments_json)`, sent at `index` 0, 1, ... in order.

    With `fragment_size` the first fragment of each call carries id, type,
    name and empty arguments and the arguments follow in pieces of that many
    characters (OpenAI's shape); with `None` each call arrives whole in one
    chunk (Ollama's shape). `text` is streamed before the calls.
    """
    f = ChunkFactory(model)
    events: list[SSEItem] = [f.role(None)]
    if reasoning:
        events += f.texts(reasoning, 8, "reasoning_content")
    if text:
        events += f.texts(text, 8)
    for index, (call_id, name, arguments) in enumerate(calls):
        head = {"index": index, "id": call_id, "type": "function"}
        if fragment_size is None:
            function = {"name": name, "arguments": arguments}
            events.append(f.chunk({"tool_calls": [{**head, "function": function}]}))
            continue
        function = {"name": name, "arguments": ""}
        events.append(f.chunk({"tool_calls": [{**head, "function": function}]}))
        size = max(1, fragment_size)
        for i in range(0, len(arguments), size):
            piece = {"index": index, "function": {"arguments": arguments[i : i + size]}}
            events.append(f.chunk({"tool_calls": [piece]}))
    return _finish(f, events, "tool_calls", usage)


def empty_reply(*, model: str = DEFAULT_MODEL) -> SSEReply:
    """A round that finishes (`stop`) without any content."""
    f = ChunkFactory(model)
    return _finish(f, [f.role()], "stop", None)


def error_in_stream_reply(
    after_text: str = "partial",
    message: str = "The server had an error while processing your request.",
    code: str | int | None = "server_error",
    *,
    model: str = DEFAULT_MODEL,
    event: bool = False,
    error_type: str = "server_error",
) -> SSEReply:
    """Text deltas, then an `{"error": {...}}` payload (preceded by
    `event: error` when `event` is true), then the stream ends without a
    finish reason or `[DONE]`, as Groq does."""
    f = ChunkFactory(model)
    events: list[SSEItem] = [f.role(), *f.texts(after_text, 4)]
    if event:
        events.append("event: error")
    events.append({"error": {"message": message, "type": error_type, "code": code}})
    return SSEReply(events)


def cut_reply(after_text: str = "partial", *, model: str = DEFAULT_MODEL) -> SSEReply:
    """Text deltas, then the connection drops mid-stream."""
    f = ChunkFactory(model)
    return SSEReply([f.role(), *f.texts(after_text, 4), Cut()])
