"""An OpenAI-compatible Chat Completions provider over httpx, streaming
with Server-Sent Events (parsed by httpx-sse).

It speaks the protocol as OpenAI, Azure OpenAI, DeepSeek, Groq, OpenRouter,
Ollama, llama.cpp and vLLM actually send it: tool-call fragments keyed by
`index`, reasoning as `reasoning_content` or `reasoning`, usage in a
trailing empty-choices chunk or on the finish chunk, errors as HTTP error
bodies or as an `error` object inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError

from pilothouse import jsontext
from pilothouse.runtime.messages import Usage
from pilothouse.runtime.model.base import ChatChunk, ChatRequest, ModelError, ToolCallDelta

log = logging.getLogger(__name__)

_TOOL_CHOICE_KEYWORDS = frozenset({"auto", "none", "required"})
_SNIPPET = 500
#: Longest wait for the end of the body after `[DONE]`, in seconds. Reading
#: it lets httpx return the connection to its pool; a body left unread
#: makes it close the connection, so every round would open a new one.
_DRAIN_SECONDS = 1.0


def build_request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a streamed Chat Completions request.

    `tools` is sent only when non-empty; `tool_choice` "auto", "none" and
    "required" go as strings, any other string names a function
    (`{"type": "function", "function": {"name": ...}}`), None leaves it out;
    `reasoning_effort` is sent when set.
    """
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        if request.tool_choice in _TOOL_CHOICE_KEYWORDS:
            body["tool_choice"] = request.tool_choice
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    return body


def parse_usage(raw: Any) -> Usage | None:
    """A `Usage` from a Chat Completions `usage` object (None when absent).

    Cached prompt tokens come from `prompt_tokens_details.cached_tokens` or
    DeepSeek's `prompt_cache_hit_tokens`; reasoning tokens from
    `completion_tokens_details.reasoning_tokens`. A missing `total_tokens`
    is the sum of prompt and completion tokens.
    """
    if not isinstance(raw, dict) or not raw:
        return None
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        _count(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0
    )
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(raw.get("total_tokens")) or prompt + completion,
        cached_tokens=max(cached, _count(raw.get("prompt_cache_hit_tokens"))),
        reasoning_tokens=reasoning,
    )


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait as the server asks, from `retry-after-ms`
    (milliseconds) or `Retry-After` (seconds, possibly fractional, or an
    HTTP-date); None when neither header is usable. Never negative."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def describe_error_body(body: Any, text: str = "") -> tuple[str, str | None]:
    """`(message, code)` from an error body in any of the common shapes:
    OpenAI/Azure `{"error": {"message", "type", "code"}}`, OpenRouter's
    `error.metadata.raw` (the upstream message), Ollama's
    `{"error": "..."}`, FastAPI's `{"detail": ...}`, a list wrapping one of
    these; otherwise a snippet of the raw `text`. The code is the
    provider's `code`, else its `type`."""
    if isinstance(body, list) and body:
        return describe_error_body(body[0], text)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str) and error:
            return error, None
        if isinstance(error, dict):
            message = _stringify(
                error.get("message") or error.get("msg") or error.get("detail") or ""
            )
            metadata = error.get("metadata")
            if isinstance(metadata, dict) and metadata.get("raw"):
                upstream = _stringify(metadata["raw"])
                provider = metadata.get("provider_name")
                extra = f"{provider}: {upstream}" if provider else upstream
                message = f"{message} ({extra})" if message else extra
            code = error.get("code")
            if code is None or code == "":
                code = error.get("type")
            if message:
                return _clip(message), (str(code) if code not in (None, "") else None)
        detail = body.get("detail") or body.get("message")
        if detail:
            return _clip(_stringify(detail)), None
    snippet = " ".join(text.split())
    return _clip(snippet), None


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _clip(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    """Delta text: a string, or the text parts of a content-parts list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text") or ""
            for part in value
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


class SSEParser:
    """Server-Sent Events out of text chunks, parsed exactly as httpx-sse's
    `SSELineDecoder` and `SSEDecoder` parse them (WHATWG rules: a line ends
    at CRLF, CR or LF; `data` lines join with LF; an event is dispatched at
    a blank line; `:` starts a comment; `id` persists) but without an
    object and two generator steps per line: the one-line `data:` event
    that model servers send thousands of times per answer is the fast path.
    """

    __slots__ = ("_data", "_event", "_last_id", "_partial", "_retry", "_trailing_cr")

    def __init__(self) -> None:
        self._partial = ""  # the start of a line whose end has not arrived
        self._trailing_cr = False  # a chunk ended in CR: maybe half of a CRLF
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, text: str) -> list[tuple[str, str]]:
        """`(event type, data)` of the events completed by `text`."""
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

    def flush(self) -> list[tuple[str, str]]:
        """The events completed by the end of the body."""
        if not self._partial and not self._trailing_cr:
            return []
        line, self._partial, self._trailing_cr = self._partial, "", False
        return self._lines([line])

    def _lines(self, lines: list[str]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        for line in lines:
            if not line:
                if self._event or self._data or self._last_id or self._retry is not None:
                    events.append((self._event or "message", "\n".join(self._data)))
                    self._event, self._data, self._retry = "", [], None
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


async def _server_sent_events(
    response: httpx.Response, idle_timeout: float
) -> AsyncIterator[list[tuple[str, str]]]:
    """The response's events, a batch per chunk of the body (one generator
    step per network read, not per event). Raises `SSEError`, with
    httpx-sse's message, when the response is not an event stream, and
    `httpx.ReadTimeout` when `idle_timeout` seconds pass without an event
    although bytes arrive (keep-alive comments for ever reset httpx's own
    read timeout)."""
    content_type = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in content_type:
        raise SSEError(
            "Expected response header Content-Type to contain 'text/event-stream', "
            f"got {content_type!r}"
        )
    parser = SSEParser()
    clock = asyncio.get_running_loop().time
    last_event = clock()
    async for text in response.aiter_text():
        events = parser.feed(text)
        if events:
            last_event = clock()
            yield events
        elif clock() - last_event > idle_timeout:
            raise httpx.ReadTimeout(f"only comments for {idle_timeout:g}s, no event")
    events = parser.flush()
    if events:
        yield events


async def _drain(events: AsyncIterator[Any]) -> None:
    """Read the rest of a body after `[DONE]` (normally only its end), for
    at most `_DRAIN_SECONDS`; whatever it holds is ignored."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, SSEError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in events:
                pass


@dataclass(slots=True)
class _StreamState:
    """What one stream has shown so far."""

    finish_reason: str | None = None
    done: bool = False
    model: str | None = None
    # Servers that leave out a tool call's `index` are keyed by the call id.
    ids: dict[str, int] = field(default_factory=dict)
    last_index: int | None = None
    max_index: int = -1

    def tool_index(self, index: Any, call_id: str | None, position: int) -> int:
        if isinstance(index, int) and not isinstance(index, bool):
            resolved = index
        elif call_id and call_id in self.ids:
            resolved = self.ids[call_id]
        elif call_id:
            resolved = self.max_index + 1
        elif self.last_index is not None:
            resolved = self.last_index
        else:
            resolved = position
        if call_id:
            self.ids.setdefault(call_id, resolved)
        self.last_index = resolved
        self.max_index = max(self.max_index, resolved)
        return resolved


class OpenAIChatModel:
    """A `ChatModel` for any OpenAI-compatible `/chat/completions` endpoint.

    `base_url` is the API root (e.g. `https://api.openai.com/v1`); requests
    go to `{base_url}/chat/completions` with `Authorization: Bearer
    {api_key}` when `api_key` is set, plus `extra_headers`. Timeouts are in
    seconds: `connect_timeout` to open a connection, `read_timeout` for the
    longest silence between two reads (the first byte included).

    Requests answered with 429 or 5xx, and connection failures before the
    first byte of the body, are retried up to `max_retries` times, waiting
    what `retry-after-ms` / `Retry-After` ask for or else an exponential
    backoff with full jitter (`retry_base_delay * 2**attempt`), both capped
    at `retry_max_delay` seconds. Once the body has started, nothing is
    retried. `provider_name` names the provider in error messages (with
    the host of `base_url`: "openai (127.0.0.1:8000)") and is
    the OpenTelemetry `gen_ai.provider.name`. `transport` replaces httpx's
    network transport (tests, proxies).

    Every streaming round holds one HTTP/1.1 connection, so
    `max_connections` caps the model streams in flight: the default, 1000
    (the OpenAI SDK's), is ten times httpx's 100, past which concurrent
    runs would queue inside httpx. `max_keepalive_connections` idle ones
    are kept for reuse (None: no limit).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 20.0,
        extra_headers: dict[str, str] | None = None,
        provider_name: str = "openai",
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int | None = 1000,
        max_keepalive_connections: int | None = 100,
    ) -> None:
        self.provider_name = provider_name
        self.base_url = base_url.rstrip("/")
        #: How error texts name the endpoint: the configured provider and the
        #: host it was reached at, e.g. "openai (127.0.0.1:8000)".
        self.source = f"{provider_name} ({httpx.URL(self.base_url).netloc.decode() or self.base_url})"
        self.url = f"{self.base_url}/chat/completions"
        self.max_retries = max(0, max_retries)
        self.retry_base_delay = max(0.0, retry_base_delay)
        self.retry_max_delay = max(0.0, retry_max_delay)
        self.read_timeout = read_timeout
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update(extra_headers or {})
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
            ),
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the shared HTTP client and its connections."""
        await self._client.aclose()

    async def __aenter__(self) -> OpenAIChatModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream one model round as `ChatChunk`s.

        Yields only chunks that carry text, reasoning, tool-call fragments,
        a finish reason or usage, each with the `model` the server reported.
        Ends normally at `[DONE]`, or at the end of the body once a finish
        reason has arrived. Raises `ModelError`: for an HTTP error status
        (with `status_code` and the provider's `code`), for an `error`
        object inside the stream, for a body cut before any finish reason
        or `[DONE]` ("model stream ended before completion ..."), and for
        timeouts and connection failures (`retryable=True`). For an error
        inside the stream, `status_code` is the status the provider states
        in it (Groq's `status_code`, OpenRouter's numeric `code`), if any.

        Closing the generator early (`aclose()`, or cancelling the task
        consuming it) closes the HTTP response; use
        `contextlib.aclosing` when you may stop before the end.
        """
        http_request = self._client.build_request(
            "POST", self.url, json=build_request_body(request)
        )
        attempt = 0
        while True:
            try:
                response = await self._client.send(http_request, stream=True)
            except httpx.HTTPError as exc:
                error = self._transport_error(exc)
                if not error.retryable:
                    raise error from exc
                if attempt >= self.max_retries:
                    raise self._gave_up(error, attempt) from exc
                delay = self._backoff(attempt)
            else:
                try:
                    if not response.is_success:
                        error = await self._status_error(response)
                        if not error.retryable:
                            raise error
                        if attempt >= self.max_retries:
                            raise self._gave_up(error, attempt)
                        delay = self._retry_delay(attempt, response.headers)
                    else:
                        try:
                            async with contextlib.aclosing(self._read(response)) as chunks:
                                async for chunk in chunks:
                                    yield chunk
                            return
                        except httpx.HTTPError as exc:
                            error = self._stream_transport_error(exc)
                            # Once the body has started, a retry could repeat output.
                            if response.num_bytes_downloaded or not error.retryable:
                                raise error from exc
                            if attempt >= self.max_retries:
                                raise self._gave_up(error, attempt) from exc
                            delay = self._backoff(attempt)
                finally:
                    await response.aclose()
            attempt += 1
            log.warning(
                "%s; retrying in %.2fs (retry %d of %d)",
                error.message,
                delay,
                attempt,
                self.max_retries,
            )
            await asyncio.sleep(delay)

    # --- reading a response ------------------------------------------------------------------

    async def _read(self, response: httpx.Response) -> AsyncIterator[ChatChunk]:
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type.endswith("json"):
            # The server ignored `stream: true` and answered in one piece.
            async for chunk in self._read_completion(response):
                yield chunk
            return
        state = _StreamState()
        try:
            async with contextlib.aclosing(_server_sent_events(response, self.read_timeout)) as batches:
                async for batch in batches:
                    for event, data in batch:
                        if event == "error":
                            raise self._stream_error(data)
                        data = data.strip()
                        if not data:
                            continue
                        if data == "[DONE]":
                            state.done = True
                            break
                        chunk = self._parse_chunk(self._decode(data), state)
                        if chunk is not None:
                            yield chunk
                    if state.done:
                        await _drain(batches)
                        break
        except SSEError as exc:
            body = (await response.aread()).decode(errors="replace")
            raise ModelError(
                f"{self.source} did not answer with an event stream ({exc}): "
                f"{_clip(' '.join(body.split()))}",
                status_code=response.status_code,
            ) from exc
        except httpx.HTTPError:
            if state.finish_reason is None:
                raise
            # The answer is complete; only the trailer (usage, [DONE]) is lost.
            log.warning(
                "%s: connection lost after finish_reason %r; keeping the answer",
                self.source,
                state.finish_reason,
            )
            return
        if not state.done and state.finish_reason is None:
            raise ModelError(
                "model stream ended before completion: "
                f"{self.source} closed the stream without a finish_reason or [DONE]",
                retryable=True,
            )

    def _decode(self, data: str) -> dict[str, Any]:
        try:
            payload = jsontext.loads(data)
        except ValueError as exc:
            raise ModelError(
                f"{self.source} sent a malformed stream chunk: {_clip(data)!r}"
            ) from exc
        if not isinstance(payload, dict):
            raise ModelError(f"{self.source} sent a malformed stream chunk: {_clip(data)!r}")
        if payload.get("error"):
            raise self._stream_error(payload)
        return payload

    def _parse_chunk(self, payload: dict[str, Any], state: _StreamState) -> ChatChunk | None:
        # Runs once per streamed chunk: absent keys are skipped before any
        # conversion, and no chunk object is made for a chunk that carries
        # nothing.
        model = payload.get("model")
        if isinstance(model, str) and model:
            state.model = model
        raw_usage = payload.get("usage")
        usage = parse_usage(raw_usage) if raw_usage else None
        content = reasoning = ""
        tool_calls: list[ToolCallDelta] = []
        finish_reason: str | None = None
        for choice in payload.get("choices") or ():
            # We ask for one choice; index 0 is the only one to read.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = delta.get("content")
                if text:
                    content += text if isinstance(text, str) else _text(text)
                text = delta.get("refusal")
                if text:
                    content += text if isinstance(text, str) else _text(text)
                text = delta.get("reasoning_content")
                thought = _text(text) if text else ""
                if not thought:
                    text = delta.get("reasoning")
                    thought = _text(text) if text else ""
                reasoning += thought
                calls = delta.get("tool_calls")
                if calls:
                    tool_calls.extend(self._tool_deltas(calls, state))
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                finish_reason = state.finish_reason = finish
        if not content and not reasoning and not tool_calls and finish_reason is None and usage is None:
            return None
        return ChatChunk(
            content=content or None,
            reasoning=reasoning or None,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
            model=state.model,
        )

    @staticmethod
    def _tool_deltas(raw: Any, state: _StreamState) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        if not isinstance(raw, list):
            return deltas
        for position, call in enumerate(raw):
            if not isinstance(call, dict):
                continue
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
            name = function.get("name") if isinstance(function.get("name"), str) else None
            arguments = function.get("arguments")
            if isinstance(arguments, (dict, list)):
                # Some servers send the arguments as a JSON value, not text.
                arguments = json.dumps(arguments)
            elif not isinstance(arguments, str):
                arguments = None
            index = state.tool_index(call.get("index"), call_id, position)
            if call_id or name or arguments:
                deltas.append(ToolCallDelta(index, call_id, name or None, arguments or None))
        return deltas

    async def _read_completion(self, response: httpx.Response) -> AsyncIterator[ChatChunk]:
        raw = await response.aread()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ModelError(
                f"{self.source} sent malformed JSON: {_clip(raw.decode(errors='replace'))}",
                status_code=response.status_code,
            ) from exc
        if not isinstance(body, dict) or body.get("error"):
            raise self._stream_error(body)
        choices = [c for c in body.get("choices") or [] if isinstance(c, dict)]
        choice = next((c for c in choices if c.get("index", 0) == 0), {})
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        state = _StreamState()
        delta = {
            "content": message.get("content"),
            "refusal": message.get("refusal"),
            "reasoning_content": message.get("reasoning_content"),
            "reasoning": message.get("reasoning"),
            "tool_calls": [
                {**call, "index": call.get("index", i)}
                for i, call in enumerate(message.get("tool_calls") or [])
                if isinstance(call, dict)
            ],
        }
        payload = {
            "model": body.get("model"),
            "usage": body.get("usage"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
        }
        chunk = self._parse_chunk(payload, state)
        if chunk is None or state.finish_reason is None:
            raise ModelError(
                f"model stream ended before completion: {self.source} sent a "
                "completion without a finish_reason",
                retryable=True,
            )
        yield chunk

    # --- errors and retries ------------------------------------------------------------------

    def _stream_error(self, raw: Any) -> ModelError:
        """The `ModelError` for an `error` object (or `event: error` data)
        inside a 200 response."""
        if isinstance(raw, str):
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = None
            text = raw
        else:
            body, text = raw, json.dumps(raw)
        message, code = describe_error_body(body, text)
        error = body.get("error") if isinstance(body, dict) else None
        stated = error.get("status_code") if isinstance(error, dict) else None
        if not isinstance(stated, int) or isinstance(stated, bool):
            stated = error.get("code") if isinstance(error, dict) else None
        status = stated if isinstance(stated, int) and 100 <= stated <= 599 else None
        kind = f"{code or ''} {error.get('type') if isinstance(error, dict) else ''}".lower()
        retryable = (status is not None and (status == 429 or status >= 500)) or (
            status is None and any(k in kind for k in ("server_error", "overloaded", "rate_limit"))
        )
        suffix = f" (code {code})" if code else ""
        return ModelError(
            f"{self.source} reported an error in the stream: {message or 'no message'}"
            f"{suffix}",
            status_code=status,
            code=code,
            retryable=retryable,
        )

    async def _status_error(self, response: httpx.Response) -> ModelError:
        status = response.status_code
        retryable = status == 429 or status >= 500
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            return ModelError(
                f"{self.source} returned HTTP {status} {response.reason_phrase}; "
                f"its body could not be read ({type(exc).__name__}: {exc})",
                status_code=status,
                retryable=retryable,
            )
        text = raw.decode(errors="replace")
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        message, code = describe_error_body(body, text)
        suffix = f" (code {code})" if code else ""
        return ModelError(
            f"{self.source} returned HTTP {status}: "
            f"{message or response.reason_phrase or 'no message'}{suffix}",
            status_code=status,
            code=code,
            retryable=retryable,
        )

    def _transport_error(self, exc: httpx.HTTPError) -> ModelError:
        """A failure before any response arrived."""
        name = type(exc).__name__
        detail = str(exc) or "no detail"
        if isinstance(exc, httpx.ConnectTimeout):
            message = f"timed out connecting to {self.provider_name} at {self.url}"
        elif isinstance(exc, httpx.ReadTimeout):
            message = (
                f"{self.provider_name} did not respond within {self.read_timeout:g}s at {self.url}"
            )
        elif isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            return ModelError(f"cannot send the request to {self.url}: {name}: {detail}")
        else:
            message = f"could not reach {self.provider_name} at {self.url}"
        return ModelError(f"{message} ({name}: {detail})", retryable=True)

    def _stream_transport_error(self, exc: httpx.HTTPError) -> ModelError:
        """A failure while reading the body."""
        name = type(exc).__name__
        detail = str(exc) or "no detail"
        if isinstance(exc, httpx.ReadTimeout):
            cause = f"{self.source} sent nothing for {self.read_timeout:g}s"
        elif isinstance(exc, httpx.TransportError):
            cause = f"the connection to {self.source} was lost"
        else:
            cause = f"the body from {self.source} could not be decoded"
            return ModelError(f"model stream ended before completion: {cause} ({name}: {detail})")
        return ModelError(
            f"model stream ended before completion: {cause} ({name}: {detail})",
            retryable=True,
        )

    def _gave_up(self, error: ModelError, attempt: int) -> ModelError:
        if attempt == 0:
            return error
        return ModelError(
            f"{error.message} (gave up after {attempt + 1} attempts)",
            status_code=error.status_code,
            code=error.code,
            retryable=error.retryable,
        )

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        ceiling = min(self.retry_max_delay, self.retry_base_delay * (2**attempt))
        return random.uniform(0.0, ceiling)

    def _retry_delay(self, attempt: int, headers: Mapping[str, str]) -> float:
        asked = parse_retry_after(headers)
        if asked is None:
            return self._backoff(attempt)
        return min(asked, self.retry_max_delay)
