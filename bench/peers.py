"""The peer frameworks doing the bench's tool-call turn in-process, against
the same fake model server. Runs with `bench/.venv-peers/bin/python` (the
peers are never installed next to Pilothouse):

    python bench/peers.py --base-url http://127.0.0.1:PORT/v1 --peer openai-agents

Prints one JSON object: the peer's version, the event loop, the turn times in
milliseconds, the process's CPU seconds over the measured turns, and an
error if the peer could not run a turn.

Both peers get the same work as Pilothouse: the `calculate` tool (the same
arithmetic, evaluated in-process without eval), streaming on, the whole
stream consumed until the run ends. Tracing export is off in both (it would
try to reach a vendor's network service).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import operator
import os
import resource
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import workload as w

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("unsupported expression")


def calculate_expression(expression: str) -> str:
    """Arithmetic without eval(), like the reference ToolExecutor's tool."""
    return str(_evaluate(ast.parse(expression, mode="eval")))


TurnFn = Callable[[], Awaitable[str]]


def openai_agents_turn(base_url: str) -> tuple[str, TurnFn]:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)

    @function_tool
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: The expression, for example "(2 + 3) * 4".
        """
        return calculate_expression(expression)

    client = AsyncOpenAI(base_url=base_url, api_key="bench")
    agent = Agent(
        name="bench",
        instructions=w.SYSTEM_PROMPT,
        tools=[calculate],
        model=OpenAIChatCompletionsModel(model=w.MODEL_TURN, openai_client=client),
    )

    async def turn() -> str:
        result = Runner.run_streamed(agent, input=w.USER_MESSAGE)
        async for _event in result.stream_events():
            pass
        return str(result.final_output)

    return metadata.version("openai-agents"), turn


def langgraph_turn(base_url: str) -> tuple[str, TurnFn]:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    @tool
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: The expression, for example "(2 + 3) * 4".
        """
        return calculate_expression(expression)

    model = ChatOpenAI(
        model=w.MODEL_TURN, base_url=base_url, api_key="bench", streaming=True, stream_usage=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated in favour of langchain's
        graph = create_react_agent(model, [calculate], prompt=w.SYSTEM_PROMPT)

    async def turn() -> str:
        last = ""
        async for message, _meta in graph.astream(
            {"messages": [("user", w.USER_MESSAGE)]}, stream_mode="messages"
        ):
            if getattr(message, "type", "") == "AIMessageChunk" and message.content:
                last += message.content
        return last

    version = f"langgraph {metadata.version('langgraph')}, langchain-openai {metadata.version('langchain-openai')}"
    return version, turn


PEERS = {"openai-agents": openai_agents_turn, "langgraph": langgraph_turn}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(peer: str, base_url: str, turns: int, warmup: int, seconds: float) -> dict[str, Any]:
    version, turn = PEERS[peer](base_url)
    expected = "".join(w.answer_tokens())
    for _ in range(warmup):
        answer = await turn()
        if answer.strip() != expected.strip():
            raise RuntimeError(f"unexpected answer {answer!r}")
    samples: list[float] = []
    cpu_before = _cpu_s()
    deadline = time.monotonic() + seconds
    while len(samples) < turns and time.monotonic() < deadline:
        start = time.perf_counter()
        await turn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"version": version, "samples_ms": samples, "cpu_s": _cpu_s() - cpu_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith(("LANGSMITH_", "LANGCHAIN_", "OPENAI_"))]:
        del os.environ[key]
    result: dict[str, Any] = {"peer": args.peer, "loop": args.loop}
    coroutine = measure(args.peer, args.base_url, args.turns, args.warmup, args.seconds)
    try:
        if args.loop == "uvloop":
            import uvloop

            result |= uvloop.run(coroutine)
        else:
            result |= asyncio.run(coroutine)
    except Exception as exc:  # reported in the table instead of failing the bench
        result["error"] = f"{type(exc).__name__}: {exc}"
    json.dump(result, sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
