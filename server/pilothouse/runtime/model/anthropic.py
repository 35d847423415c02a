"""A native Anthropic Messages provider: the wire format of
`anthropic_wire` over the shared HTTP streaming of `http`.

It speaks HTTP through httpx directly rather than through the official
`anthropic` SDK, for three reasons. The hot path: the SDK builds a pydantic
object per streamed event and accumulates a second copy of the message,
where the shared decoder here does a JSON parse and a few dict lookups per
event (the same SSE parser the OpenAI-compatible provider uses). One
behaviour for every provider: retries before the first byte (429 and 529
with `Retry-After`), the connect / first-byte / idle timeouts, and errors
that name the configured provider and host and say `mid_stream` and
`retryable` are the shared ones, not a second policy with its own
exception classes (the SDK would have to be told not to retry, and its
errors mapped). And no new runtime dependency. The wire format is small
and versioned (`anthropic-version`), and the tests replay real captured
streams against it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import httpx

from pilothouse.runtime.model.anthropic_wire import (
    ANTHROPIC_VERSION,
    build_request_body,
    decode_stream,
)
from pilothouse.runtime.model.base import STRUCTURED_OUTPUT_TOOL, ChatChunk, ChatRequest
from pilothouse.runtime.model.http import HTTPChatModel, ProviderHTTP
from pilothouse.runtime.model.retry import RetryPolicy

DEFAULT_BASE_URL = "https://api.anthropic.com"


def messages_url(base_url: str) -> str:
    """`{base_url}/v1/messages`, or `{base_url}/messages` when the base URL
    already ends with the API version."""
    base = base_url.rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


class AnthropicChatModel(HTTPChatModel):
    """A `ChatModel` for the Anthropic Messages API (`POST /v1/messages`,
    streamed).

    `base_url` is the API root (`https://api.anthropic.com`, or a proxy's);
    `api_key` goes in `x-api-key`; `extra_headers` are added (for example
    `anthropic-beta`). Timeouts, retries, `provider_name` and the
    connection limits are as for `OpenAIChatModel`: 429, 529 (overloaded)
    and other 5xx answers are retried before the body begins, honouring
    `Retry-After`; nothing is retried once it has.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        idle_timeout: float | None = None,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 20.0,
        extra_headers: dict[str, str] | None = None,
        provider_name: str = "anthropic",
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int | None = 1000,
        max_keepalive_connections: int | None = 100,
    ) -> None:
        self.provider_name = provider_name
        self.url = messages_url(base_url)
        headers = {"Accept": "text/event-stream", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        headers.update(extra_headers or {})
        self.http = ProviderHTTP(
            url=self.url,
            headers=headers,
            provider_name=provider_name,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            idle_timeout=idle_timeout,
            retry=RetryPolicy(max_retries, retry_base_delay, retry_max_delay),
            transport=transport,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
        )

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream one model round as `ChatChunk`s.

        Text, thinking (with the signature that closes each thinking block,
        and redacted thinking blocks whole), tool-call fragments keyed by
        content-block index, then one chunk with the finish reason (`stop`,
        `length` for max_tokens, `tool_calls`, `refusal` with the stop
        details' explanation, `pause_turn`) and the usage (prompt tokens
        include cache reads and writes, reported apart too). Ends at
        `message_stop`, or at the end of the body once the stop reason has
        arrived. Raises `ModelError` for an HTTP error status, an `error`
        event in the stream (`code` its type, e.g. `overloaded_error`,
        retryable for overloaded, API and rate-limit errors; `usage` what
        `message_start` reported), a stream cut before its stop reason,
        and timeouts and connection failures.
        """
        answer_tool = STRUCTURED_OUTPUT_TOOL if request.response_format is not None else None
        return self.http.stream(
            build_request_body(request), functools.partial(decode_stream, answer_tool=answer_tool)
        )
