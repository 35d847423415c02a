"""ToolExecutor faults: a tool slower than the call deadline, the executor
killed (`kill -9`) in the middle of a call, absent when the runtime starts,
and restarted with other tools.

A failed call is an error result the model reads and the run goes on; the
runtime starts without its executor (reporting it NOT_SERVING), discovers
it when it comes up and follows it when its tools change.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from client import Client, Ledger, judge_turn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Stack
from report import CLEAR, CRASH, UNCLEAR, Category

TEXT = "STOP_REASON_TEXT_RESPONSE"
RUN_SERVICE = "pilothouse.v1.RunService"


def _calls(tool: str, **arguments) -> str:
    return f"fault.tool:{tool}:{json.dumps(arguments)}"


def _result_says(turn, text: str) -> bool:
    return any(text in (r.error or r.output) for r in turn.results())


async def _judged(category: Category, client: Client, ledger: Ledger, name: str, session: str,
                  turn, must_say: str) -> None:
    verdict, detail = judge_turn(turn, {TEXT})
    if verdict == CLEAR and not _result_says(turn, must_say):
        verdict, detail = UNCLEAR, f"no {must_say!r} in the tool result: {turn.results()}"[:200]
    await ledger.record(client, session)
    lost, invalid = await ledger.audit(client, session)
    category.add(name, verdict, detail, lost=lost, invalid=invalid)


async def _slow_and_killed(category: Category, stack: Stack, client: Client, ledger: Ledger) -> None:
    session = await client.new_session(_calls("sleep_ms", ms=8000), ("sleep_ms",))
    turn = await client.turn(session, timeout=60)
    await _judged(category, client, ledger, "a tool slower than the deadline", session, turn,
                  "timed out")

    session = await client.new_session(_calls("sleep_ms", ms=30_000), ("sleep_ms",))
    tools = stack.tools[0]

    async def kill_on_call(event) -> None:
        if event.HasField("tool_calls_start"):
            tools.kill9()

    turn = await client.turn(session, timeout=60, on_event=kill_on_call)
    await _judged(category, client, ledger, "the executor killed mid-call", session, turn,
                  "unavailable")
    tools.spawn()
    await tools.wait_serving()
    session = await client.new_session(_calls("current_time"), ("current_time",))
    turn = await _until_tool_works(client, session)
    await _judged(category, client, ledger, "calls work again once the executor is back",
                  session, turn, "")


async def _until_tool_works(client: Client, session: str, seconds: float = 20):
    """The runtime reconnects by itself; a call made before it has is an
    error result, so try a few times."""
    deadline = time.monotonic() + seconds
    while True:
        turn = await client.turn(session, timeout=30)
        if any(r.WhichOneof("outcome") == "output" for r in turn.results()):
            return turn
        if time.monotonic() > deadline:
            return turn
        await asyncio.sleep(0.5)


async def _serving(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return reply.status


async def _wait_for(predicate, seconds: float) -> float | None:
    """Seconds until `predicate()` held, or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def _agent_possible(client: Client, model: str, tools: tuple[str, ...]) -> bool:
    try:
        await client.agent(model, tools)
    except grpc.aio.AioRpcError:
        return False
    return True


async def _absent_at_start(category: Category, work) -> None:
    settings = {"tool_rediscovery_interval": "1", "health_requires_tool_executors": "true"}
    stack = Stack.create(work / "absent", start_tools=False, **settings)
    try:
        try:
            await stack.start()
        except RuntimeError as exc:
            category.add("the runtime starts without its executor", CRASH, str(exc)[-200:])
            return
        category.add("the runtime starts without its executor", CLEAR)
        status = await _serving(stack.runtime.address, RUN_SERVICE)
        verdict = CLEAR if status == health_pb2.HealthCheckResponse.NOT_SERVING else UNCLEAR
        category.add("RunService NOT_SERVING while the executor is absent", verdict,
                     health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        async with Client(stack.runtime.address) as client:
            try:
                await client.agent(_calls("calculate", expression="6*7"), ("calculate",))
                category.add("an agent needing its tools is refused meanwhile", UNCLEAR, "accepted")
            except grpc.aio.AioRpcError as exc:
                category.status("an agent needing its tools is refused meanwhile", exc,
                                {grpc.StatusCode.FAILED_PRECONDITION})
            tools = stack.tools[0]
            tools.spawn()
            await tools.wait_serving()
            model = _calls("calculate", expression="6*7")
            took = await _wait_for(lambda: _agent_possible(client, model, ("calculate",)), 30)
            category.add("its tools are discovered when it comes up",
                         CLEAR if took is not None else UNCLEAR,
                         f"after {took:.1f}s" if took is not None else "not within 30s")
            if took is not None:
                category.figures["executor discovered after it came up"] = f"{took:.1f} s"
                session = await client.new_session(model, ("calculate",))
                ledger = Ledger()
                turn = await client.turn(session)
                await _judged(category, client, ledger, "a run uses them", session, turn, "42")
    finally:
        await stack.close()


async def _restarted_with_other_tools(category: Category, stack: Stack, client: Client,
                                      ledger: Ledger) -> None:
    old = await client.agent(_calls("text_stats", text="a b"), ("text_stats",))
    tools = stack.tools[0]
    await tools.stop()
    tools.argv[-1] = "b"  # --toolset b: no text_stats, a new word_count
    tools.spawn()
    await tools.wait_serving()
    model = _calls("word_count", text="one two three")
    took = await _wait_for(lambda: _agent_possible(client, model, ("word_count",)), 30)
    category.add("new tools are discovered after a restart", CLEAR if took is not None else UNCLEAR,
                 f"after {took:.1f}s" if took is not None else "not within 30s")
    session = await client.session(old)
    turn = await client.turn(session)
    await _judged(category, client, ledger, "a vanished tool is an error result", session, turn,
                  "text_stats")
    if took is not None:
        session = await client.new_session(model, ("word_count",))
        turn = await client.turn(session)
        await _judged(category, client, ledger, "a new tool works", session, turn, "3")


async def run(category: Category, work, quick: bool) -> None:
    settings = {"tool_rediscovery_interval": "1"}
    async with Stack.create(work / "main", **settings) as stack, Client(stack.runtime.address) as client:
        ledger = Ledger()
        await _slow_and_killed(category, stack, client, ledger)
        await _restarted_with_other_tools(category, stack, client, ledger)
        lost, invalid = await ledger.audit_all(client)
        category.add("every history intact at the end", CLEAR if stack.runtime.alive() else CRASH,
                     lost=lost, invalid=invalid)
    await _absent_at_start(category, work)
