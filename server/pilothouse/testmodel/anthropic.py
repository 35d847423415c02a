"""A fake Anthropic Messages server (aiohttp) and builders of real-shaped
Messages streams, for tests that run an agent on the Anthropic provider end
to end.

`AnthropicMessagesServer` serves `POST /v1/messages` from a responder, as
`ChatCompletionsServer` serves Chat Completions (the same `SSEReply` /
`JSONReply` items, cuts and pauses). Its base URL is the API root
(`http://127.0.0.1:PORT`), as `AnthropicChatModel` expects. A request
without `"stream": true` gets HTTP 400.

`MessagesEvents` writes the events as the API does (`event:` line, then
`data:`), and the `anthropic_*_reply` functions assemble whole answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from pilothouse.testmodel.replies import SSEItem, SSEReply
from pilothouse.testmodel.server import FakeModelServer

DEFAULT_MODEL = "claude-fake-1"


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """An API error body: `{"type": "error", "error": {...}, "request_id"}`."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


class AnthropicMessagesServer(FakeModelServer):
    """Serves `POST /v1/messages` (see the module docstring)."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.handle)

    def bad_request(self, message: str) -> web.Response:
        return web.json_response(anthropic_error_body("invalid_request_error", message), status=400)

    async def __aenter__(self) -> AnthropicMessagesServer:
        await self.start()
        return self


class MessagesEvents:
    """Events of one Messages stream, as lists of `SSEReply` items."""

    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self.id = f"msg_{uuid.uuid4().hex[:24]}"

    @staticmethod
    def event(name: str, payload: dict[str, Any]) -> list[SSEItem]:
        return [f"event: {name}", f"data: {json.dumps(payload)}"]

    def message_start(
        self, input_tokens: int = 10, cache_read: int = 0, cache_write: int = 0
    ) -> list[SSEItem]:
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "output_tokens": 1,
        }
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
        }  # fmt: skip
        return self.event("message_start", {"type": "message_start", "message": message})

    def ping(self) -> list[SSEItem]:
        return ["event: ping", 'data: {"type": "ping"}']

    def _block(self, index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[SSEItem]:
        items = self.event(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        )
        for delta in deltas:
            items += self.event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            )
        items += self.event("content_block_stop", {"type": "content_block_stop", "index": index})
        return items

    def text_block(self, index: int, text: str, chunk_size: int = 8) -> list[SSEItem]:
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(text, chunk_size)]
        return self._block(index, {"type": "text", "text": ""}, deltas)

    def thinking_block(
        self, index: int, thinking: str, signature: str, chunk_size: int = 16
    ) -> list[SSEItem]:
        deltas: list[dict[str, Any]] = [
            {"type": "thinking_delta", "thinking": piece} for piece in _pieces(thinking, chunk_size)
        ]
        deltas.append({"type": "signature_delta", "signature": signature})
        return self._block(index, {"type": "thinking", "thinking": "", "signature": ""}, deltas)

    def redacted_block(self, index: int, data: str) -> list[SSEItem]:
        return self._block(index, {"type": "redacted_thinking", "data": data}, [])

    def tool_use_block(
        self, index: int, call_id: str, name: str, arguments: str, fragment_size: int = 8
    ) -> list[SSEItem]:
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _pieces(arguments, fragment_size)
        ]
        start = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        return self._block(index, start, deltas)

    def message_delta(self, stop_reason: str, output_tokens: int = 5) -> list[SSEItem]:
        payload = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
        return self.event("message_delta", payload)

    def message_stop(self) -> list[SSEItem]:
        return self.event("message_stop", {"type": "message_stop"})

    def error(self, error_type: str, message: str) -> list[SSEItem]:
        return self.event(
            "error", {"type": "error", "error": {"type": error_type, "message": message}}
        )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def anthropic_text_reply(
    text: str,
    *,
    thinking: str | None = None,
    signature: str = "sig-1",
    redacted: Sequence[str] = (),
    model: str = DEFAULT_MODEL,
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_write: int = 0,
    stop_reason: str = "end_turn",
) -> SSEReply:
    """A streamed answer: optional signed thinking, redacted thinking
    blocks, then text, with usage and `stop_reason`."""
    f = MessagesEvents(model)
    items = f.message_start(input_tokens, cache_read, cache_write) + f.ping()
    index = 0
    if thinking is not None:
        items += f.thinking_block(index, thinking, signature)
        index += 1
    for data in redacted:
        items += f.redacted_block(index, data)
        index += 1
    items += f.text_block(index, text)
    items += f.message_delta(stop_reason, output_tokens) + f.message_stop()
    return SSEReply(items)


def anthropic_tool_use_reply(
    calls: Sequence[tuple[str, str, str]],
    *,
    text: str | None = None,
    thinking: str | None = None,
    signature: str = "sig-1",
    model: str = DEFAULT_MODEL,
    input_tokens: int = 10,
    output_tokens: int = 5,
) -> SSEReply:
    """A streamed round of (id, name, JSON arguments) tool calls, after
    optional thinking and text; `stop_reason` tool_use."""
    f = MessagesEvents(model)
    items = f.message_start(input_tokens)
    index = 0
    if thinking is not None:
        items += f.thinking_block(index, thinking, signature)
        index += 1
    if text is not None:
        items += f.text_block(index, text)
        index += 1
    for call_id, name, arguments in calls:
        items += f.tool_use_block(index, call_id, name, arguments)
        index += 1
    items += f.message_delta("tool_use", output_tokens) + f.message_stop()
    return SSEReply(items)


def anthropic_error_event_reply(
    error_type: str, message: str, *, after_text: str | None = None
) -> SSEReply:
    """A 200 stream that reports an error (after some text, optionally)."""
    f = MessagesEvents()
    items = f.message_start()
    if after_text is not None:
        items += f.event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        items += f.event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": after_text}},
        )  # fmt: skip
    items += f.error(error_type, message)
    return SSEReply(items)
