"""The HTTP side every provider shares: one httpx client per provider, the
retry loop before a response body begins, the three timeouts (connect,
first byte, idle), errors that name the configured provider and its host,
and the end of a body read off the hot path.

A provider supplies the JSON request body and a decoder: an async
generator that reads a `Body` (decoded text, chunk by chunk) and yields
`ChatChunk`s. Everything else is here.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from pilothouse.runtime.model.base import ChatChunk, FailureCause, ModelError
from pilothouse.runtime.model.retry import RetryPolicy, status_is_retryable

log = logging.getLogger(__name__)

#: Longest a body is read after the protocol's end (`[DONE]`,
#: `message_stop`), in seconds, in the background: reading it lets httpx
#: return the connection to its pool; one left unread makes it close the
#: connection, so every round would open a new one. The round itself does
#: not wait for it.
DRAIN_SECONDS = 1.0
#: Characters of an error text kept in a message.
SNIPPET = 500


def clip(text: str) -> str:
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def describe_error_body(body: Any, text: str = "") -> tuple[str, str | None]:
    """`(message, code)` from an error body in any of the common shapes:
    OpenAI/Azure `{"error": {"message", "type", "code"}}`, Anthropic's
    `{"type": "error", "error": {"type", "message"}, "request_id"}` (the
    request id is added to the message), OpenRouter's `error.metadata.raw`
    (the upstream message), Ollama's `{"error": "..."}`, FastAPI's
    `{"detail": ...}`, a list wrapping one of these; otherwise a snippet of
    the raw `text`. The code is the provider's `code`, else its `type`."""
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
            request_id = body.get("request_id")
            if message and isinstance(request_id, str) and request_id:
                message = f"{message} (request {request_id})"
            if message:
                return clip(message), (str(code) if code not in (None, "") else None)
        detail = body.get("detail") or body.get("message")
        if detail:
            return clip(_stringify(detail)), None
    snippet = " ".join(text.split())
    return clip(snippet), None


def status_cause(status: int) -> FailureCause:
    """The `FailureCause` of an HTTP error status."""
    if status == 429:
        return FailureCause.RATE_LIMITED
    if status in (503, 529):
        return FailureCause.OVERLOADED
    if status >= 500:
        return FailureCause.SERVER_ERROR
    return FailureCause.CLIENT_ERROR


# --- timeouts ------------------------------------------------------------------------------


class Watchdog:
    """Cancels the task awaiting a read that passes its limit.

    One timer serves the whole stream and is re-armed only when it fires
    (a read pending past its deadline is cut; otherwise it is set again
    for the current deadline), instead of a timeout object per read: a
    model answer is thousands of reads. `arm(seconds)` before a read,
    `disarm()` after it; `expired(task)` tells, in the `CancelledError`
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
    ) -> None:
        self.response = response
        self.provider = provider
        self.started = False
        self.finished = False
        self._chunks = response.aiter_bytes()
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


class _Guard:
    """`async with _Guard(watch, seconds)`: the watchdog over one await
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


# --- the client ----------------------------------------------------------------------------

#: A provider's decoder: reads a 2xx body, yields chunks, raises ModelError.
Decoder = Callable[[Body], AsyncIterator[ChatChunk]]


class ProviderHTTP:
    """POSTs JSON to one provider URL and streams the answer.

    Timeouts in seconds: `connect_timeout` to open a connection;
    `read_timeout` for the response to begin (headers and the first body
    bytes); `idle_timeout` for the longest silence once the body has begun
    (None: the same as `read_timeout`). Requests answered with 408, 409,
    429 or 5xx (529 included) and connection failures before the body
    begins are retried as `retry` says; nothing is retried once it has.

    Every error is a `ModelError` naming `provider_name` and the URL's
    host, with its `cause`, `retryable` and `mid_stream`. Every streaming
    round holds one HTTP/1.1 connection, so `max_connections` caps the
    model streams in flight (1000 by default, the OpenAI SDK's, ten times
    httpx's 100); `max_keepalive_connections` idle ones are kept (None: no
    limit). `transport` replaces httpx's network transport (tests, proxies).
    """

    def __init__(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        provider_name: str,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        idle_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int | None = 1000,
        max_keepalive_connections: int | None = 100,
    ) -> None:
        self.url = url
        self.provider_name = provider_name
        self.host = urlsplit(url).netloc or url
        self.retry = retry or RetryPolicy()
        self.read_timeout = read_timeout
        self.idle_timeout = read_timeout if idle_timeout is None else idle_timeout
        # httpx enforces the longer limit on every read; a watchdog the
        # shorter one, in its phase, when the two differ.
        longest = max(self.read_timeout, self.idle_timeout)
        self._first_byte_s = self.read_timeout if self.read_timeout < longest else None
        self._idle_s = self.idle_timeout if self.idle_timeout < longest else None
        self._client = httpx.AsyncClient(
            headers=dict(headers),
            timeout=httpx.Timeout(longest, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
            ),
            transport=transport,
        )
        self._drains: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close the client, its connections and the bodies still draining."""
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await self._client.aclose()

    async def stream(self, payload: dict[str, Any], decode: Decoder) -> AsyncIterator[ChatChunk]:
        """POST `payload` and yield what `decode` makes of the body,
        retrying failures before the body begins. Raises ModelError.

        Closing the generator early (`aclose()`, or cancelling the task
        consuming it) closes the HTTP response."""
        request = self._client.build_request("POST", self.url, json=payload)
        watch = Watchdog() if self._first_byte_s is not None or self._idle_s is not None else None
        attempt = 0
        try:
            while True:
                try:
                    async with _Guard(watch, self._first_byte_s):
                        response = await self._client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    error = self._transport_error(exc)
                    delay = self._retry_delay(error, attempt, None)
                    if delay is None:
                        raise self._gave_up(error, attempt) from exc
                else:
                    if not response.is_success:
                        try:
                            error = await self._status_error(response)
                        finally:
                            await response.aclose()
                        delay = self._retry_delay(error, attempt, response.headers)
                        if delay is None:
                            raise self._gave_up(error, attempt)
                    else:
                        body = Body(response, self.provider_name, watch, self._first_byte_s, self._idle_s)
                        released = False
                        try:
                            async with contextlib.aclosing(decode(body)) as chunks:
                                async for chunk in chunks:
                                    yield chunk
                            released = self._release(body)
                            return
                        except httpx.HTTPError as exc:
                            error = self._body_error(exc, body)
                            delay = None if body.started else self._retry_delay(error, attempt, None)
                            if delay is None:
                                raise self._gave_up(error, attempt) from exc
                        except ModelError as error:
                            self._own(error, mid_stream=body.started)
                            raise
                        finally:
                            if not released:
                                await body.close()
                attempt += 1
                log.warning(
                    "%s; retrying in %.2fs (retry %d of %d)",
                    error.message, delay, attempt, self.retry.max_retries,
                )
                await asyncio.sleep(delay)
        finally:
            if watch is not None:
                watch.close()

    # --- after the body --------------------------------------------------------------------

    def _release(self, body: Body) -> bool:
        """Let the rest of a finished body be read in the background (the
        connection goes back to the pool); True when that was started."""
        if not body.finished or body.response.is_closed:
            return False
        task = asyncio.get_running_loop().create_task(body.drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return True

    # --- errors ----------------------------------------------------------------------------

    def _own(self, error: ModelError, *, mid_stream: bool | None = None) -> ModelError:
        """`error` with this provider's name and host."""
        if not error.provider:
            error.provider = self.provider_name
        if mid_stream is not None:
            error.mid_stream = mid_stream
        if self.host not in error.message:
            error.message = f"{error.message} [host {self.host}]"
            error.args = (error.message,)
        return error

    def _retry_delay(
        self, error: ModelError, attempt: int, headers: Mapping[str, str] | None
    ) -> float | None:
        """Seconds before the next attempt, or None when there is none."""
        if not error.retryable or attempt >= self.retry.max_retries:
            return None
        return self.retry.delay(attempt, headers)

    def _gave_up(self, error: ModelError, attempt: int) -> ModelError:
        if attempt and error.retryable:
            error.message = f"{error.message} (gave up after {attempt + 1} attempts)"
        return self._own(error)

    async def _status_error(self, response: httpx.Response) -> ModelError:
        status = response.status_code
        retryable = status_is_retryable(status, response.headers)
        cause = status_cause(status)
        name = self.provider_name
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            return ModelError(
                f"{name} returned HTTP {status} {response.reason_phrase}; "
                f"its body could not be read ({type(exc).__name__}: {exc})",
                status_code=status, retryable=retryable, cause=cause,
            )  # fmt: skip
        text = raw.decode(errors="replace")
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        message, code = describe_error_body(body, text)
        if cause is not FailureCause.OVERLOADED and code and "overloaded" in code:
            cause = FailureCause.OVERLOADED
        suffix = f" (code {code})" if code else ""
        return ModelError(
            f"{name} returned HTTP {status}: "
            f"{message or response.reason_phrase or 'no message'}{suffix}",
            status_code=status, code=code, retryable=retryable, cause=cause,
        )  # fmt: skip

    def _transport_error(self, exc: httpx.HTTPError) -> ModelError:
        """A failure before any response arrived."""
        name = type(exc).__name__
        detail = f"({name}: {exc or 'no detail'})"
        provider = self.provider_name
        if isinstance(exc, httpx.ConnectTimeout):
            message, cause = f"timed out connecting to {provider} at {self.url}", FailureCause.CONNECT_TIMEOUT
        elif isinstance(exc, httpx.ReadTimeout):
            message = f"{provider} did not respond within {self.read_timeout:g}s at {self.url}"
            cause = FailureCause.READ_TIMEOUT
        elif isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            return ModelError(
                f"cannot send the request to {self.url}: {detail[1:-1]}", cause=FailureCause.BAD_REQUEST
            )
        elif isinstance(exc, httpx.ConnectError):
            message, cause = f"could not reach {provider} at {self.url}", FailureCause.CONNECT_ERROR
        else:
            message, cause = f"could not reach {provider} at {self.url}", FailureCause.CONNECTION_RESET
        return ModelError(f"{message} {detail}", retryable=True, cause=cause)

    def _body_error(self, exc: httpx.HTTPError, body: Body) -> ModelError:
        """A failure while reading a 2xx body."""
        name = type(exc).__name__
        detail = f"({name}: {exc or 'no detail'})"
        provider = self.provider_name
        if isinstance(exc, httpx.ReadTimeout):
            if body.started:
                cause = FailureCause.IDLE_TIMEOUT
                what = f"{provider} sent nothing for {self.idle_timeout:g}s"
            else:
                cause = FailureCause.READ_TIMEOUT
                what = f"{provider} sent nothing for {self.read_timeout:g}s"
        elif isinstance(exc, httpx.TransportError):
            cause, what = FailureCause.CONNECTION_RESET, f"the connection to {provider} was lost"
        else:
            return ModelError(
                "model stream ended before completion: "
                f"the body from {provider} could not be decoded {detail}",
                mid_stream=body.started, cause=FailureCause.BAD_RESPONSE,
            )  # fmt: skip
        return ModelError(
            f"model stream ended before completion: {what} {detail}",
            retryable=True, mid_stream=body.started, cause=cause,
        )  # fmt: skip
