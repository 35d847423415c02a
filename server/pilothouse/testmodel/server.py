"""Fake model servers (aiohttp) driven by a responder: `FakeModelServer`
holds what every wire format shares (queued replies, request log,
streaming with cuts and pauses, disconnect detection), and
`ChatCompletionsServer` serves the OpenAI-compatible Chat Completions API:
the fake model server of the tests and the host of the built-in scripted
test model. (The Anthropic Messages one is in `testmodel.anthropic`.)"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias

from aiohttp import web

from pilothouse.testmodel.replies import (
    Cut,
    Delay,
    JSONReply,
    Pause,
    Raw,
    Reply,
    SSEItem,
    SSEReply,
)

log = logging.getLogger(__name__)

Responder: TypeAlias = Callable[[dict[str, Any]], Awaitable[Reply]]
"""`async (request_body) -> Reply`: decides the reply to one request."""

QueuedReply: TypeAlias = Reply | Callable[[dict[str, Any]], Reply | Awaitable[Reply]]
"""A reply, or a function of the request body that makes one."""

NO_REPLY_MESSAGE = "fake model: no reply queued"


class QueueResponder:
    """Answers each request with the next queued reply, in order.

    A queued callable is called with the request body (and awaited when it
    returns an awaitable). With the queue empty, the request gets HTTP 500
    `{"error": {"message": "fake model: no reply queued", ...}}`, so a
    test that makes one request too many fails loudly.
    """

    def __init__(self, replies: Iterable[QueuedReply] = ()) -> None:
        self.queue: list[QueuedReply] = list(replies)
        self.served = 0

    def push(self, *replies: QueuedReply) -> None:
        """Queue more replies after the ones already waiting."""
        self.queue.extend(replies)

    @property
    def remaining(self) -> int:
        """How many replies are still queued."""
        return len(self.queue)

    async def __call__(self, body: dict[str, Any]) -> Reply:
        if not self.queue:
            return JSONReply(500, _error_body(NO_REPLY_MESSAGE, "no_reply_queued"))
        item = self.queue.pop(0)
        self.served += 1
        if isinstance(item, (SSEReply, JSONReply)):
            return item
        reply = item(body)
        return await reply if inspect.isawaitable(reply) else reply


_PASS_THROUGH_PREFIXES = ("event:", "id:", "retry:", ":")


def _error_body(message: str, code: str, type_: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def encode_item(item: str | dict[str, Any] | Raw) -> bytes:
    """The body bytes for one `SSEReply` item (see `replies` for the rules)."""
    if isinstance(item, Raw):
        return item.data
    if isinstance(item, dict):
        return f"data: {json.dumps(item)}\n\n".encode()
    if item.startswith("data:"):
        return f"{item}\n\n".encode()
    if item == "" or item.startswith(_PASS_THROUGH_PREFIXES):
        return f"{item}\n".encode()
    return f"data: {item}\n\n".encode()


def _payloads(item: str | dict[str, Any] | Raw) -> list[str]:
    """The `data:` payloads an item carries, for assembling a non-streamed
    completion out of a streamed reply (one `data:` line per event, as the
    fixtures and builders write them)."""
    lines = encode_item(item).decode("utf-8", errors="replace").splitlines()
    payloads = []
    for line in lines:
        if line.startswith("data:"):
            value = line[5:]
            payloads.append(value[1:] if value.startswith(" ") else value)
    return payloads


def assemble_completion(payloads: Iterable[str]) -> tuple[int, dict[str, Any]]:
    """Fold streamed chunk payloads into `(status, body)`: a
    `chat.completion` object, or the error the stream carried (status taken
    from its `status_code`, else 500)."""
    content: list[str] = []
    refusal: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    head: dict[str, Any] = {"id": "", "created": 0, "model": ""}
    for payload in payloads:
        if payload.strip() == "[DONE]":
            break
        if not payload.strip():
            continue
        chunk = json.loads(payload)
        if chunk.get("error"):
            error = chunk["error"]
            status = error.get("status_code") if isinstance(error, dict) else None
            return (status if isinstance(status, int) else 500), {"error": error}
        for key in head:
            if chunk.get(key):
                head[key] = chunk[key]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            refusal.append(delta.get("refusal") or "")
            reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                call = calls.setdefault(
                    fragment.get("index", position),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = call["id"] or fragment.get("id") or ""
                function = fragment.get("function") or {}
                call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
    text = "".join(content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": "".join(refusal) or None,
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    body: dict[str, Any] = {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return 200, body


class FakeModelServer:
    """Serves a model API on `host:port` (port 0 picks a free port).

    Each request's JSON body is appended to `requests` (and its headers to
    `request_headers`) before `responder` is asked for the reply. A
    streamed request (`"stream": true`) gets the `SSEReply` as it is; any
    other request gets `complete(reply)`. When a client goes away in the
    middle of a reply, `disconnects` is incremented and `disconnected` is
    set. Subclasses add the routes of their API in `routes`.
    """

    #: The base URL's path, after `http://host:port`.
    base_path = ""

    def __init__(self, responder: Responder, host: str = "127.0.0.1", port: int = 0) -> None:
        self.responder = responder
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def routes(self, app: web.Application) -> None:
        """Add the API's routes (`self.handle` serves a model request)."""
        raise NotImplementedError

    async def start(self) -> str:
        """Start listening; returns the base URL, e.g. `http://127.0.0.1:PORT/v1`."""
        app = web.Application()
        self.routes(app)
        # handler_cancellation lets a handler notice that its client went away.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self._stopping = False
        host, port = runner.addresses[0][:2]
        self.port = port
        self.base_url = f"http://{host}:{port}{self.base_path}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; replies still held by a `Pause` are abandoned."""
        self._stopping = True
        for task in list(self._handlers):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def bad_request(self, message: str) -> web.Response:
        """The API's answer to a request it cannot read (HTTP 400)."""
        return web.json_response(_error_body(message, "invalid_json", "invalid_request_error"), status=400)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Log the request and send the responder's reply."""
        try:
            body = await request.json()
        except ValueError as exc:
            return self.bad_request(f"fake model: request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return self.bad_request("fake model: request body is not a JSON object")
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._reply(request, body)
        finally:
            self._handlers.discard(task)

    async def _reply(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        try:
            reply = await self.responder(body)
        except Exception as exc:
            log.exception("fake model: responder failed")
            return web.json_response(
                _error_body(f"fake model: responder failed: {exc!r}", "responder_failed"),
                status=500,
            )
        if isinstance(reply, JSONReply):
            return self._json(reply)
        state = _Connection(request)
        try:
            if body.get("stream"):
                return await self._stream(state, reply)
            return await self._complete(state, reply)
        except asyncio.CancelledError:
            if not state.cut and not self._stopping:
                self.disconnects += 1
                self.disconnected.set()
            raise

    @staticmethod
    def _json(reply: JSONReply) -> web.Response:
        body = reply.body
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _stream(self, conn: _Connection, reply: SSEReply) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **reply.headers,
        }
        response = web.StreamResponse(status=reply.status, headers=headers)
        for position, item in enumerate(reply.events):
            if position == 0 and not isinstance(item, Cut):
                await response.prepare(conn.request)
            if await conn.control(item):
                return response
            if not isinstance(item, (Pause, Delay)):
                await response.write(encode_item(item))
        if not reply.events:
            await response.prepare(conn.request)
        await response.write_eof()
        return response

    async def _complete(self, conn: _Connection, reply: SSEReply) -> web.StreamResponse:
        """The reply to a request that did not ask for a stream."""
        return self.bad_request("fake model: only streamed requests are served")


class ChatCompletionsServer(FakeModelServer):
    """Serves `POST /v1/chat/completions` and `GET /v1/models`; a
    `stream: false` request gets the streamed reply folded into one
    `chat.completion` JSON."""

    base_path = "/v1"

    def __init__(
        self,
        responder: Responder,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model_ids: Sequence[str] = ("fake-model",),
    ) -> None:
        super().__init__(responder, host, port)
        self.model_ids = list(model_ids)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/v1/models", self._models)

    async def __aenter__(self) -> ChatCompletionsServer:
        await self.start()
        return self

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "pilothouse"}
            for model in self.model_ids
        ]
        return web.json_response({"object": "list", "data": data})

    async def _complete(self, conn: _Connection, reply: SSEReply) -> web.StreamResponse:
        payloads: list[str] = []
        for item in reply.events:
            if await conn.control(item):
                return web.StreamResponse()
            if not isinstance(item, (Pause, Delay)):
                payloads += _payloads(item)
        try:
            status, body = assemble_completion(payloads)
        except ValueError as exc:
            status, body = 500, _error_body(f"fake model: bad chunk in reply: {exc}", "bad_reply")
        if reply.status != 200:
            status = reply.status
        return web.json_response(body, status=status, headers=reply.headers or None)


class _Connection:
    """One request's connection, for the control items of a reply."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.cut = False

    async def control(self, item: SSEItem) -> bool:
        """Carry out a `Pause`, `Delay` or `Cut`; true when the connection
        has been cut and the reply must stop."""
        if isinstance(item, Delay):
            await asyncio.sleep(item.seconds)
        elif isinstance(item, Pause):
            await item.event.wait()
        elif isinstance(item, Cut):
            self.cut = True
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            return True
        return False
