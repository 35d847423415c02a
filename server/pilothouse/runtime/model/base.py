"""The interface between the agent loop and a model provider.

A provider turns a `ChatRequest` (the runtime's own messages, tool specs and
model settings) into its own wire format, and its streamed answer into
`ChatChunk`s, one per streamed event that carries anything. It raises
`ModelError` for anything that keeps the stream from completing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pilothouse.runtime.messages import Message, Usage
from pilothouse.runtime.tools import ToolSpec


class ReasoningEffort(StrEnum):
    """How hard the model is asked to reason before it answers. "" leaves
    it to the provider; "none" asks for no reasoning. Each provider maps it
    to its own wire format (OpenAI-compatible: `reasoning_effort`;
    Anthropic: an extended-thinking budget)."""

    DEFAULT = ""
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Sampling and output settings of one request; None (or empty) leaves
    each to the provider's default.

    `temperature` 0-2 (Anthropic accepts 0-1), `top_p` 0-1, `max_tokens`
    the most tokens one round may generate, `stop` sequences that end the
    answer, `parallel_tool_calls` False asks for at most one tool call per
    round.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort = ReasoningEffort.DEFAULT


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output asked of the final answer: a JSON Schema (`schema`,
    an object schema) with a `name` (letters, digits, `_` and `-`); `strict`
    when the schema meets OpenAI's strict-mode rules (every object closed
    with `additionalProperties: false` and all its properties required).
    OpenAI-compatible providers send it as `response_format`; the Anthropic
    provider as a tool named `STRUCTURED_OUTPUT_TOOL` the model must answer
    with, whose input becomes the answer's text."""

    name: str
    schema: dict[str, Any]
    strict: bool = False


#: The tool an Anthropic model answers with when structured output is asked.
STRUCTURED_OUTPUT_TOOL = "structured_output"


@dataclass(slots=True)
class ChatRequest:
    """One model request in the runtime's own types.

    `system` is the system prompt (SYSTEM messages inside `messages` are
    system instructions too); `messages` is the history, oldest first;
    `tools` the specs the model may call; `tool_choice` is "auto", "none",
    "required", a tool name, or None to leave it out (sent only with tools);
    `response_format` asks for structured output.
    """

    model: str
    messages: Sequence[Message]
    system: str = ""
    tools: Sequence[ToolSpec] = ()
    tool_choice: str | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    response_format: ResponseFormat | None = None


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


#: Finish reasons every provider maps its own to (`ChatChunk.finish_reason`).
FINISH_STOP = "stop"  # a natural end or a stop sequence
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_TOOL_CALLS = "tool_calls"
FINISH_CONTENT_FILTER = "content_filter"
FINISH_REFUSAL = "refusal"  # the provider stopped the answer as a refusal
FINISH_PAUSE = "pause_turn"  # Anthropic paused a long turn (server tools)


@dataclass(slots=True)
class ChatChunk:
    """What one streamed event carried.

    `content` is answer text (an OpenAI refusal counts as text); `reasoning`
    is reasoning text; `reasoning_signature` closes the reasoning block
    streamed so far with the provider's signature, and `redacted_reasoning`
    is a whole redacted reasoning block (both kept on the assistant message
    to be sent back); `refusal` is the provider's refusal text or
    explanation when it refused; `finish_reason` is one of the `FINISH_*`
    values (or a provider's own when it has no equivalent); `usage` is set
    on the chunk that reports it; `model` is the model name the server
    reported.
    """

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    reasoning_signature: str | None = None
    redacted_reasoning: str | None = None
    refusal: str | None = None


class FailureCause(StrEnum):
    """Why a model call failed, in a word (`ModelError.cause`)."""

    CONNECT_ERROR = "connect_error"  # the endpoint could not be reached
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"  # no response (or first byte) in time
    IDLE_TIMEOUT = "idle_timeout"  # the stream went silent after it began
    CONNECTION_RESET = "connection_reset"  # the connection was lost
    RATE_LIMITED = "rate_limited"  # HTTP 429
    OVERLOADED = "overloaded"  # HTTP 529 / 503, or an overloaded error event
    SERVER_ERROR = "server_error"  # another 5xx
    CLIENT_ERROR = "client_error"  # a 4xx: the request itself is refused
    ERROR_EVENT = "error_event"  # an error reported inside a 200 stream
    INCOMPLETE = "incomplete"  # the body ended before the answer did
    BAD_RESPONSE = "bad_response"  # not an event stream, malformed data
    BAD_REQUEST = "bad_request"  # the request could not be sent at all
    UNKNOWN_PROVIDER = "unknown_provider"


class ModelError(Exception):
    """The model call failed.

    `status_code` is the HTTP status when there was one (or the status an
    error inside the stream states); `code` the provider's error code or
    type when it sent one; `retryable` says whether the same request may
    succeed later (429, 5xx, overloaded, timeouts, lost connections);
    `mid_stream` whether the failure came after the response body had
    begun (chunks may have been yielded: a retry must redo the whole round);
    `cause` is a `FailureCause`; `provider` names the configured provider;
    `usage` is the usage the failed stream reported and no chunk carried
    (for example in the same chunk as an error), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        mid_stream: bool = False,
        cause: FailureCause | str = FailureCause.BAD_RESPONSE,
        provider: str = "",
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retryable = retryable
        self.mid_stream = mid_stream
        self.cause = cause
        self.provider = provider
        self.usage = usage


class ChatModel(Protocol):
    """A streaming chat model.

    `provider_name` is the OpenTelemetry `gen_ai.provider.name` value.
    `stream` yields chunks until the model finishes and raises `ModelError`
    on any failure, including a stream cut before its end.
    """

    provider_name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def aclose(self) -> None: ...
