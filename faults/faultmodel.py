"""A fault-injecting OpenAI-compatible Chat Completions server, run as its
own process by the fault suite:

    python faults/faultmodel.py [--port 0]

It prints ``listening on PORT`` once it serves. The reply to a request is
chosen by the request's `model`, ``fault.<scenario>[:<arg>...]`` (every
agent of the suite names the scenario it wants as its model), and by the
conversation: a request whose last message is a tool result gets the
final answer, so a tool-calling scenario makes one tool round and then
answers, unless the scenario loops. Scenarios that fail a number of times
before answering count the requests of each conversation, keyed by its
first user message (the suite makes each one unique).

Scenarios (arguments after colons):

* ``ok`` / ``ok:N``: a text answer of N deltas (default 5).
* ``tool:NAME:JSON``: call tool NAME with the JSON arguments, then answer;
  ``tool-then-slow:NAME:JSON`` answers slowly (as ``slow:200:50``).
* ``status:CODE[:N]``: HTTP CODE (an OpenAI error body) N times (default:
  always), then answer; ``retry-after:SECONDS[:N]`` is a 429 with that
  Retry-After.
* ``reset``, ``stall``, ``keepalive``, ``malformed``, ``error-object``,
  ``event-error``, ``no-done``, ``no-finish``, ``non-sse``: the stream
  faults their names say (``stall`` and ``keepalive`` never end: the
  runtime has to give up).
* ``deep-chunk``: a chunk nested 5,000 levels deep.
* ``huge:MB``: a text answer of that many megabytes.
* ``deep-args:TOOL:DEPTH``: a call of TOOL whose arguments nest DEPTH levels.
* ``bad-args:TOOL``: a call with arguments that are not JSON.
* ``dup-ids:TOOL``, ``empty-ids:TOOL``, ``empty-name``: two calls sharing one
  id, two calls without ids, a call without a function name.
* ``loop:TOOL``: a tool call in every round (the agent's max_iterations
  ends it).
* ``slow:MS:N``: N text deltas, one every MS milliseconds.
* ``slow-first:MS``: wait MS milliseconds before the first byte, then answer.

With ``--wire anthropic`` it is an Anthropic Messages server instead
(`POST /v1/messages`, the API's event stream and error bodies), with the
scenarios that wire format has of its own:

* ``ok``, ``tool:NAME:JSON``, ``reset``, ``stall``, ``malformed``,
  ``non-sse``, ``huge:MB``, ``bad-args:TOOL``, ``dup-ids:TOOL``,
  ``loop:TOOL`` as above.
* ``overloaded[:N]``: HTTP 529 `overloaded_error` N times (default:
  always), then answer; ``rate-limit:SECONDS[:N]`` a 429 with that
  Retry-After.
* ``error-event``: an `error` event (`overloaded_error`) after some text.
* ``pings``: `ping` events for ever, and nothing else.
* ``no-stop``: text, but neither `message_delta` nor `message_stop`.
* ``max-tokens``, ``refusal``: an answer whose `stop_reason` says so.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

from harness import until_signalled

from pilothouse.testmodel import (
    ChatCompletionsServer,
    ChunkFactory,
    Cut,
    Delay,
    JSONReply,
    Reply,
    SSEReply,
    error_in_stream_reply,
    text_reply,
    tool_calls_reply,
)
from pilothouse.testmodel.anthropic import (
    AnthropicMessagesServer,
    MessagesEvents,
    anthropic_error_body,
    anthropic_error_event_reply,
    anthropic_text_reply,
    anthropic_tool_use_reply,
)

PREFIX = "fault."
ANSWER = "The fault suite's answer."


def _error(status: int, message: str) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


def _nested(depth: int) -> str:
    return '{"expression":' + "[" * depth + "]" * depth + "}"


class FaultResponder:
    """Builds the reply each scenario asks for (see the module docstring)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        #: The server's log of request bodies, emptied at every request (the
        #: suite never reads it; a soak of 10,000 runs would fill it).
        self.request_log: list[dict[str, Any]] = []

    async def __call__(self, body: dict[str, Any]) -> Reply:
        self.request_log.clear()
        model = str(body.get("model", ""))
        name, *args = model.removeprefix(PREFIX).split(":")
        messages = body.get("messages") or []
        first_user = next((m.get("content") for m in messages if m.get("role") == "user"), "")
        self.seen[str(first_user)] += 1
        attempt = self.seen[str(first_user)]
        if self.after_tool(messages) and name == "tool-then-slow":
            return await self._reply("slow", ["200", "50"], model, attempt)
        if self.after_tool(messages) and name not in ("loop",):
            return self.answer(model)
        return await self._reply(name, args, model, attempt)

    @staticmethod
    def after_tool(messages: list[dict[str, Any]]) -> bool:
        """The conversation ends with a tool result."""
        return bool(messages) and messages[-1].get("role") == "tool"

    @staticmethod
    def answer(model: str) -> Reply:
        return text_reply(ANSWER, model=model)

    async def _reply(self, name: str, args: list[str], model: str, attempt: int) -> Reply:
        f = ChunkFactory(model)
        if name == "ok":
            count = int(args[0]) if args else 5
            return text_reply(" ".join(["word"] * count), model=model, chunk_size=5)
        if name in ("tool", "tool-then-slow"):
            return tool_calls_reply([("call_1", args[0], ":".join(args[1:]) or "{}")], model=model)
        if name in ("status", "retry-after"):
            status = int(args[0]) if name == "status" else 429
            times = int(args[1]) if len(args) > 1 else 10**9
            if attempt > times:
                return text_reply(ANSWER, model=model)
            headers = {"Retry-After": args[0]} if name == "retry-after" else {}
            return JSONReply(status, _error(status, f"injected HTTP {status}"), headers)
        if name == "reset":
            return SSEReply([f.role(), *f.texts("partial answer", 4), Cut()])
        if name == "stall":
            return SSEReply([f.role(), *f.texts("partial", 4), Delay(10**6)])
        if name == "keepalive":
            return SSEReply([f.role(), *[item for _ in range(10**4) for item in (": keep-alive", Delay(0.5))]])
        if name == "deep-chunk":
            return SSEReply([f.role(), "[" * 5000 + "]" * 5000, "[DONE]"])
        if name == "malformed":
            return SSEReply([f.role(), '{"choices": [{"delta": {"content": "x"', "[DONE]"])
        if name == "error-object":
            return error_in_stream_reply(model=model)
        if name == "event-error":
            return error_in_stream_reply(model=model, event=True)
        if name == "no-done":
            return SSEReply([f.role(), *f.texts(ANSWER, 4), f.chunk({}, finish_reason="stop")])
        if name == "no-finish":
            return SSEReply([f.role(), *f.texts(ANSWER, 4)])
        if name == "non-sse":
            return JSONReply(200, "<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
        if name == "huge":
            megabytes = float(args[0]) if args else 30.0
            piece = "x" * 65536
            count = int(megabytes * 16)
            chunk = f.chunk({"content": piece})
            return SSEReply([f.role(), *[chunk] * count, f.chunk({}, finish_reason="stop"), "[DONE]"])
        if name == "deep-args":
            return tool_calls_reply([("call_1", args[0], _nested(int(args[1])))], model=model)
        if name == "bad-args":
            return tool_calls_reply([("call_1", args[0], '{"expression": 1 +')], model=model)
        if name == "dup-ids":
            calls = [("call_1", args[0], "{}"), ("call_1", args[0], "{}")]
            return tool_calls_reply(calls, model=model)
        if name == "empty-ids":
            return tool_calls_reply([("", args[0], "{}"), ("", args[0], "{}")], model=model)
        if name == "empty-name":
            return tool_calls_reply([("call_1", "", "{}")], model=model)
        if name == "loop":
            return tool_calls_reply([(f"call_{attempt}", args[0], "{}")], model=model)
        if name == "slow":
            delay, count = int(args[0]) / 1000, int(args[1])
            events = [f.role()]
            for _ in range(count):
                events += [Delay(delay), f.chunk({"content": "slow "})]
            return SSEReply([*events, f.chunk({}, finish_reason="stop"), "[DONE]"])
        if name == "slow-first":
            await asyncio.sleep(int(args[0]) / 1000)
            return text_reply(ANSWER, model=model)
        return JSONReply(404, _error(404, f"no fault scenario {name!r}"))


class AnthropicFaultResponder(FaultResponder):
    """The scenarios over the Anthropic Messages wire format."""

    @staticmethod
    def after_tool(messages: list[dict[str, Any]]) -> bool:
        if not messages or messages[-1].get("role") != "user":
            return False
        content = messages[-1].get("content")
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )

    @staticmethod
    def answer(model: str) -> Reply:
        return anthropic_text_reply(ANSWER, model=model)

    async def _reply(self, name: str, args: list[str], model: str, attempt: int) -> Reply:
        f = MessagesEvents(model)
        if name == "ok":
            return anthropic_text_reply(" ".join(["word"] * 5), model=model)
        if name in ("overloaded", "rate-limit"):
            status = 529 if name == "overloaded" else 429
            count = (args[0] if args else "") if name == "overloaded" else (
                args[1] if len(args) > 1 else "")
            if attempt > (int(count) if count else 10**9):
                return self.answer(model)
            kind = "overloaded_error" if status == 529 else "rate_limit_error"
            headers = {"Retry-After": args[0]} if name == "rate-limit" else {}
            return JSONReply(status, anthropic_error_body(kind, f"injected HTTP {status}"), headers)
        if name == "error-event":
            return anthropic_error_event_reply("overloaded_error", "Overloaded", after_text="partial")
        if name == "reset":
            return SSEReply([*f.message_start(), *f.text_block(0, "partial answer")[:4], Cut()])
        if name == "stall":
            return SSEReply([*f.message_start(), *f.text_block(0, "partial")[:4], Delay(10**6)])
        if name == "pings":
            return SSEReply([*f.message_start(), *[i for _ in range(10**4) for i in (*f.ping(), Delay(0.5))]])
        if name == "malformed":
            return SSEReply([*f.message_start(), "event: content_block_delta",
                             'data: {"type": "content_block_delta", "index": 0, "delta": {"ty'])
        if name == "no-stop":
            return SSEReply([*f.message_start(), *f.text_block(0, ANSWER)])
        if name == "non-sse":
            return JSONReply(200, "<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
        if name == "huge":
            megabytes = float(args[0]) if args else 30.0
            piece = f.event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": "x" * 65536}})
            start = f.event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": {"type": "text", "text": ""}})
            body = [item for _ in range(int(megabytes * 16)) for item in piece]
            return SSEReply([*f.message_start(), *start, *body, *f.message_delta("end_turn"),
                             *f.message_stop()])
        if name == "max-tokens":
            return anthropic_text_reply("An answer cut short", model=model, stop_reason="max_tokens")
        if name == "refusal":
            return anthropic_text_reply("", model=model, stop_reason="refusal")
        if name == "tool":
            return anthropic_tool_use_reply([("toolu_1", args[0], ":".join(args[1:]) or "{}")],
                                            model=model)
        if name == "bad-args":
            return anthropic_tool_use_reply([("toolu_1", args[0], '{"expression": 1 +')], model=model)
        if name == "dup-ids":
            return anthropic_tool_use_reply([("toolu_1", args[0], "{}"), ("toolu_1", args[0], "{}")],
                                            model=model)
        if name == "loop":
            return anthropic_tool_use_reply([(f"toolu_{attempt}", args[0], "{}")], model=model)
        return JSONReply(404, anthropic_error_body("not_found_error", f"no fault scenario {name!r}"))


async def serve(port: int, wire: str = "openai") -> None:
    if wire == "anthropic":
        responder: FaultResponder = AnthropicFaultResponder()
        server: ChatCompletionsServer | AnthropicMessagesServer = AnthropicMessagesServer(
            responder, port=port)
    else:
        responder = FaultResponder()
        server = ChatCompletionsServer(responder, port=port)
    responder.request_log = server.requests
    await server.start()
    print(f"listening on {server.port}", flush=True)
    await until_signalled()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--wire", choices=("openai", "anthropic"), default="openai")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.wire))


if __name__ == "__main__":
    main()

