"""The interface between the agent loop and a model provider.

A provider turns a `ChatRequest` into a stream of `ChatChunk`s, one per
streamed Chat Completions chunk that carries anything, and raises
`ModelError` for anything that keeps the stream from completing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pilothouse.runtime.messages import Usage


@dataclass(slots=True)
class ChatRequest:
    """One Chat Completions request.

    `messages` and `tools` are already in wire format (dicts);
    `tool_choice` is "auto", "none", "required", a function name, or None
    to leave it out; `reasoning_effort` is sent when set.
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | None = None
    reasoning_effort: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call, keyed by `index`.

    `id` and `name` usually arrive once, in the first fragment; `arguments`
    arrives in pieces to be concatenated in order.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class ChatChunk:
    """What one streamed chunk carried.

    `content` is answer text (a refusal counts as text); `reasoning` is
    reasoning text (`reasoning_content` or `reasoning`); `usage` is set on
    the chunk that reports it; `model` is the model name the server reported.
    """

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


class ModelError(Exception):
    """The model call failed.

    `status_code` is the HTTP status when there was one; `code` the
    provider's error code when it sent one; `retryable` says whether the
    same request may succeed later (429, 5xx, connection errors);
    `mid_stream` whether the stream had begun (a cut connection, an error
    inside the stream, no bytes for the idle timeout), so the round's
    partial output must be dropped before a retry; `cause` names the kind
    of failure in a word or two (e.g. "connection_reset", "idle_timeout",
    "server_error", "error_event").
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        mid_stream: bool = False,
        cause: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retryable = retryable
        self.mid_stream = mid_stream
        self.cause = cause


class ChatModel(Protocol):
    """A streaming Chat Completions model.

    `provider_name` is the OpenTelemetry `gen_ai.provider.name` value.
    `stream` yields chunks until the model finishes and raises `ModelError`
    on any failure, including a stream cut before its end.
    """

    provider_name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def aclose(self) -> None: ...
