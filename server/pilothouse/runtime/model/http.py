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
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from pilothouse.runtime.model.aiohttp_transport import AiohttpTransport
from pilothouse.runtime.model.base import ChatChunk, FailureCause, ModelError
from pilothouse.runtime.model.body import Body, Guard, Watchdog
from pilothouse.runtime.model.errors import describe_error_body, status_cause
from pilothouse.runtime.model.retry import RetryPolicy, status_is_retryable

log = logging.getLogger(__name__)


# --- the client ----------------------------------------------------------------------------

#: A provider's decoder: reads a 2xx body, yields chunks, raises ModelError.
Decoder = Callable[[Body], AsyncGenerator[ChatChunk, None]]


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
            transport=transport or AiohttpTransport(max_connections=max_connections),
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
                    async with Guard(watch, self._first_byte_s):
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
                        body = Body(
                            response, self.provider_name, watch, self._first_byte_s, self._idle_s,
                            event_idle_s=self.idle_timeout,
                        )
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
                        except ModelError as failure:
                            self._own(failure, mid_stream=body.started)
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


class HTTPChatModel:
    """What a provider over `ProviderHTTP` shares: its client's lifecycle
    (`aclose`, `async with`)."""

    http: ProviderHTTP

    async def aclose(self) -> None:
        """Close the shared HTTP client and its connections."""
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
