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
        after_tool = bool(messages) and messages[-1].get("role") == "tool"
        if after_tool and name == "tool-then-slow":
            return await self._reply("slow", ["200", "50"], model, attempt)
        if after_tool and name not in ("loop",):
            return text_reply(ANSWER, model=model)
        return await self._reply(name, args, model, attempt)

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


async def serve(port: int) -> None:
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
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

