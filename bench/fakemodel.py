"""A lean OpenAI-compatible Chat Completions server for the benchmark, run as
its own process:

    python bench/fakemodel.py [--loop uvloop] [--port 0] [--token-delay-ms 5]

It prints ``listening on PORT`` once it serves. Every reply is built once at
start-up from `pilothouse.testmodel`'s real-shaped chunk builders and kept as
bytes, so a request costs the server little more than parsing the request:
the benchmark measures the runtime, not this server (whose own cost it
reports separately).

The reply depends on the request's `model` (see `workload.py`):

* `bench-turn`: a streamed `calculate` tool call, or, when the last message
  is a tool result, a streamed answer of 20 one-token deltas; all chunks in
  one write.
* `bench-delay`: the same replies, one write per chunk, each after
  `--token-delay-ms` (a provider generating tokens at a fixed rate).
* `bench-relay`: a text answer of `--relay-deltas` one-token deltas.
* `bench-hold`: the first answer delta, then nothing until
  ``POST /bench/release`` (or `--hold-max-s`), then the rest of the answer.

Control endpoints for the bench client: ``GET /bench/stats`` (requests
served, streams being held), ``GET /bench/requests`` (the last tool-call and
answer request bodies of `bench-turn`, replayed by the raw httpx baseline),
``POST /bench/release`` (finish the held streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import workload as w
from aiohttp import web

from pilothouse.runtime.messages import Usage
from pilothouse.testmodel.replies import ChunkFactory, SSEItem, tool_calls_reply
from pilothouse.testmodel.server import encode_item

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
PROMPT_TOKENS = 64


def _encode(items: list[SSEItem]) -> list[bytes]:
    return [encode_item(item) for item in items]  # type: ignore[arg-type]


def _text_items(tokens: list[str], model: str) -> list[SSEItem]:
    """Role chunk, one chunk per token, `stop`, usage and `[DONE]`, as
    OpenAI streams a text answer with `include_usage`."""
    factory = ChunkFactory(model)
    usage = Usage(PROMPT_TOKENS, len(tokens), PROMPT_TOKENS + len(tokens))
    return [
        factory.role(),
        *(factory.chunk({"content": token}) for token in tokens),
        factory.chunk({}, finish_reason="stop"),
        factory.usage_chunk(usage),
        "[DONE]",
    ]


def _tool_call_items(model: str) -> list[SSEItem]:
    usage = Usage(PROMPT_TOKENS, 12, PROMPT_TOKENS + 12)
    reply = tool_calls_reply(
        [(w.TOOL_CALL_ID, w.TOOL_NAME, w.TOOL_ARGUMENTS)], fragment_size=8, model=model, usage=usage
    )
    return reply.events


class BenchModelServer:
    """The replies, held as bytes, and the request handlers."""

    def __init__(self, token_delay_s: float, relay_deltas: int, hold_max_s: float) -> None:
        self.token_delay_s = token_delay_s
        self.hold_max_s = hold_max_s
        self.tool_call = {m: _encode(_tool_call_items(m)) for m in (w.MODEL_TURN, w.MODEL_DELAY)}
        answer = w.answer_tokens()
        self.answer = {m: _encode(_text_items(answer, m)) for m in (w.MODEL_TURN, w.MODEL_DELAY)}
        self.relay = b"".join(_encode(_text_items([w.RELAY_TOKEN] * relay_deltas, w.MODEL_RELAY)))
        hold = _encode(_text_items(answer, w.MODEL_HOLD))
        self.hold_head, self.hold_tail = b"".join(hold[:2]), b"".join(hold[2:])
        self.joined = {
            (model, kind): b"".join(pieces)
            for kind, replies in (("tool_call", self.tool_call), ("answer", self.answer))
            for model, pieces in replies.items()
        }
        self.requests = 0
        self.holding = 0
        self.release = asyncio.Event()
        self.last_bodies: dict[str, Any] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/bench/stats", self.stats)
        app.router.add_get("/bench/requests", self.last_requests)
        app.router.add_post("/bench/release", self.release_held)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = json.loads(await request.read())
        model = body.get("model")
        messages = body.get("messages") or []
        # Without tools (a title request, say) the model can only answer.
        tools = bool(body.get("tools"))
        last_role = messages[-1].get("role") if messages else None
        kind = "tool_call" if tools and last_role != "tool" else "answer"
        response = web.StreamResponse(headers=SSE_HEADERS)
        if model == w.MODEL_TURN:
            if tools:
                self.last_bodies[kind] = body
            await response.prepare(request)
            await response.write(self.joined[(model, kind)])
        elif model == w.MODEL_DELAY:
            await response.prepare(request)
            pieces = self.tool_call[model] if kind == "tool_call" else self.answer[model]
            for piece in pieces:
                await asyncio.sleep(self.token_delay_s)
                await response.write(piece)
        elif model == w.MODEL_RELAY:
            await response.prepare(request)
            await response.write(self.relay)
        elif model == w.MODEL_HOLD:
            await response.prepare(request)
            await response.write(self.hold_head)
            self.holding += 1
            try:
                await asyncio.wait_for(self.release.wait(), self.hold_max_s)
            except TimeoutError:
                pass  # bounded: a forgotten release never hangs the bench
            finally:
                self.holding -= 1
            await response.write(self.hold_tail)
        else:
            error = {"error": {"message": f"unknown bench model {model!r}", "code": "no_model"}}
            return web.json_response(error, status=404)
        await response.write_eof()
        return response

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "holding": self.holding})

    async def last_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.last_bodies)

    async def release_held(self, request: web.Request) -> web.Response:
        self.release.set()
        self.release = asyncio.Event()
        return web.json_response({"released": True})


async def serve(args: argparse.Namespace) -> None:
    server = BenchModelServer(args.token_delay_ms / 1000, args.relay_deltas, args.hold_max_s)
    # A long keep-alive: the runtime and the clients reuse their connections.
    runner = web.AppRunner(server.app(), access_log=None, keepalive_timeout=300)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--relay-deltas", type=int, default=10_000)
    parser.add_argument("--hold-max-s", type=float, default=120.0)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
