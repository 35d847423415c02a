"""An OpenAI-compatible Chat Completions provider: the wire format of
`openai_wire` over the shared HTTP streaming of `http` (httpx, the
hand-written SSE parser of `sse`, retries of `retry`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from pilothouse.runtime.model.base import ChatChunk, ChatRequest
from pilothouse.runtime.model.http import HTTPChatModel, ProviderHTTP
from pilothouse.runtime.model.openai_wire import build_request_body, decode_stream, parse_usage
from pilothouse.runtime.model.retry import RetryPolicy, parse_retry_after

__all__ = [
    "OpenAIChatModel",
    "build_request_body",
    "parse_retry_after",
    "parse_usage",
]

#: Hosts whose API wants `max_completion_tokens` (its reasoning models
#: refuse `max_tokens`); other servers get `max_tokens`.
_COMPLETION_TOKENS_HOSTS = ("api.openai.com", ".openai.azure.com")


class OpenAIChatModel(HTTPChatModel):
    """A `ChatModel` for any OpenAI-compatible `/chat/completions` endpoint.

    `base_url` is the API root (e.g. `https://api.openai.com/v1`); requests
    go to `{base_url}/chat/completions` with `Authorization: Bearer
    {api_key}` when `api_key` is set, plus `extra_headers`. Timeouts are in
    seconds: `connect_timeout` to open a connection, `read_timeout` for the
    response to begin (its first byte), `idle_timeout` for the longest
    silence once it has (None: `read_timeout`).

    Requests answered with 408, 409, 429 or 5xx, and connection failures
    before the first byte of the body, are retried up to `max_retries`
    times, waiting what `retry-after-ms` / `Retry-After` ask for or else an
    exponential backoff with full jitter (`retry_base_delay * 2**attempt`),
    both capped at `retry_max_delay` seconds. Once the body has started,
    nothing is retried (the error says `mid_stream`). `provider_name` names
    the provider in error messages (with the host) and is the
    OpenTelemetry `gen_ai.provider.name`. `send_reasoning` sends an
    assistant's reasoning back with its tool calls (`reasoning_content`,
    which DeepSeek's thinking mode requires). `max_tokens_field` is the
    request field for the max-tokens setting (default: by host). The
    connection limits and `transport` are `ProviderHTTP`'s.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        idle_timeout: float | None = None,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 20.0,
        extra_headers: dict[str, str] | None = None,
        provider_name: str = "openai",
        send_reasoning: bool = True,
        max_tokens_field: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int | None = 1000,
        max_keepalive_connections: int | None = 100,
    ) -> None:
        self.provider_name = provider_name
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        host = urlsplit(self.base_url).hostname or ""
        if max_tokens_field is None:
            wants_completion = any(
                host == h or (h.startswith(".") and host.endswith(h))
                for h in _COMPLETION_TOKENS_HOSTS
            )
            max_tokens_field = "max_completion_tokens" if wants_completion else "max_tokens"
        self.max_tokens_field = max_tokens_field
        self.send_reasoning = send_reasoning
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
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

        Yields only chunks that carry text, reasoning, tool-call fragments,
        a finish reason or usage, each with the `model` the server reported.
        Ends normally at `[DONE]` (the rest of the body is read in the
        background, so a server that keeps it open does not delay the
        round), or at the end of the body once a finish reason has arrived.
        Raises `ModelError`: for an HTTP error status (with `status_code`
        and the provider's `code`), for an `error` object inside the stream
        (with any usage that came with it), for a body cut before any
        finish reason or `[DONE]` ("model stream ended before completion
        ..."), and for timeouts and connection failures (`retryable=True`).
        For an error inside the stream, `status_code` is the status the
        provider states in it (Groq's `status_code`, OpenRouter's numeric
        `code`), if any.

        Closing the generator early (`aclose()`, or cancelling the task
        consuming it) closes the HTTP response; use
        `contextlib.aclosing` when you may stop before the end.
        """
        body = build_request_body(
            request, send_reasoning=self.send_reasoning, max_tokens_field=self.max_tokens_field
        )
        return self.http.stream(body, decode_stream)
