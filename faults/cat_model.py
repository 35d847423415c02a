"""Model faults, from the fault-injecting model servers (`faultmodel.py`,
OpenAI-compatible and, with `--wire anthropic`, Anthropic Messages):
rate limits with short and absurd Retry-After, 5xx, connection refused,
streams reset, stalled or kept alive forever, malformed chunks, errors in
the stream, no [DONE], a body that is not SSE, an answer of tens of
megabytes, and tool calls a model gets wrong (invalid or deeply nested
arguments, unknown tools, duplicate and empty ids, no name, a loop).

Every run must end with `done` and the expected stop reason (an error
text naming the provider's host, no Python), leave a valid history and
lose nothing stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from client import Client, Ledger, judge_turn
from harness import Stack, free_port, model_proc, runtime_proc
from report import CLEAR, UNCLEAR, Category, judge

TEXT, ERROR, MAX = "STOP_REASON_TEXT_RESPONSE", "STOP_REASON_ERROR", "STOP_REASON_MAX_ITERATIONS"


@dataclass(frozen=True)
class Scenario:
    """One case: the fault scenario (the agent's model), the tools the agent
    has, the stop reasons that are right, and what else must hold."""

    name: str
    model: str
    expected: tuple[str, ...]
    tools: tuple[str, ...] = ()
    timeout: float = 60.0
    #: A text the done error (or a tool result) must contain.
    must_say: str = ""
    #: Every tool call must have a distinct id.
    unique_ids: bool = False
    known: int | None = None
    quick: bool = False
    max_iterations: int = 0
    #: The provider's wire format: "openai", or "anthropic" (the provider
    #: named `ANTHROPIC`).
    wire: str = "openai"


SCENARIOS = [
    Scenario("a plain answer", "ok", (TEXT,), quick=True),
    Scenario("429 with a short Retry-After, twice", "retry-after:0.2:2", (TEXT,), quick=True),
    Scenario("429 with an absurd Retry-After (capped)", "retry-after:999999999:1", (TEXT,), timeout=40),
    Scenario("429 for ever", "retry-after:0:1000", (ERROR,), must_say="HTTP 429"),
    Scenario("HTTP 500 for ever", "status:500", (ERROR,), must_say="{host}", quick=True),
    Scenario("HTTP 503 once", "status:503:1", (TEXT,)),
    Scenario("HTTP 400", "status:400", (ERROR,), must_say="{host}"),
    Scenario("connection reset mid-stream", "reset", (ERROR,), quick=True),
    Scenario("stream stalled mid-answer", "stall", (ERROR,), timeout=30),
    Scenario("keep-alive comments for ever", "keepalive", (ERROR,), timeout=90),
    Scenario("malformed chunk", "malformed", (ERROR,), must_say="{host}", quick=True),
    Scenario("chunk nested 5,000 levels", "deep-chunk", (ERROR,)),
    Scenario("error object mid-stream", "error-object", (ERROR,), must_say="{host}"),
    Scenario("event: error mid-stream", "event-error", (ERROR,)),
    Scenario("finish_reason but no [DONE]", "no-done", (TEXT,)),
    Scenario("neither finish_reason nor [DONE]", "no-finish", (ERROR,)),
    Scenario("a body that is not SSE", "non-sse", (ERROR,), must_say="{host}"),
    Scenario("an answer of 30 MB", "huge:30", (TEXT, "STOP_REASON_OUTPUT_LIMIT"), timeout=120, known=5),
    Scenario("tool arguments that are not JSON", "bad-args:calculate", (TEXT,), ("calculate",),
             must_say="invalid arguments", quick=True),
    Scenario("tool arguments nested 5,000 levels", "deep-args:calculate:5000", (TEXT,),
             ("calculate",), must_say="nested deeper"),
    Scenario("ask_user arguments nested 5,000 levels", "deep-args:ask_user:5000", (TEXT,),
             ("ask_user",), must_say="invalid arguments for ask_user"),
    Scenario("an unknown tool", "tool:no_such_tool:{}", (TEXT,), ("calculate",),
             must_say="not available"),
    Scenario("duplicate tool-call ids", "dup-ids:current_time", (TEXT,), ("current_time",),
             unique_ids=True, quick=True),
    Scenario("empty tool-call ids", "empty-ids:current_time", (TEXT,), ("current_time",),
             unique_ids=True),
    Scenario("a tool call without a name", "empty-name", (TEXT,), ("current_time",),
             must_say="names no tool", quick=True),
    Scenario("an endless tool loop", "loop:current_time", (MAX,), ("current_time",),
             max_iterations=4, quick=True),
]

#: The named provider the Anthropic scenarios use (`[[providers]]`).
ANTHROPIC = "claude"


def _anthropic(name: str, model: str, expected: tuple[str, ...], tools: tuple[str, ...] = (),
               **kwargs) -> Scenario:
    return Scenario(f"Anthropic: {name}", model, expected, tools, wire="anthropic", **kwargs)


ANTHROPIC_SCENARIOS = [
    _anthropic("a plain answer", "ok", (TEXT,), quick=True),
    _anthropic("529 overloaded_error twice", "overloaded:2", (TEXT,), quick=True),
    _anthropic("529 overloaded_error for ever", "overloaded", (ERROR,), must_say="{host}"),
    _anthropic("429 with a short Retry-After, twice", "rate-limit:0.2:2", (TEXT,)),
    _anthropic("an error event after some text", "error-event", (ERROR,), must_say="{host}",
               quick=True),
    _anthropic("connection reset mid-stream", "reset", (ERROR,)),
    _anthropic("stream stalled mid-answer", "stall", (ERROR,), timeout=30),
    _anthropic("ping events for ever", "pings", (ERROR,), timeout=90),
    _anthropic("malformed event data", "malformed", (ERROR,), must_say="{host}"),
    _anthropic("text without message_stop", "no-stop", (ERROR, TEXT)),
    _anthropic("a body that is not SSE", "non-sse", (ERROR,), must_say="{host}"),
    _anthropic("an answer of 30 MB", "huge:30", ("STOP_REASON_OUTPUT_LIMIT",), timeout=120),
    _anthropic("stop_reason max_tokens", "max-tokens", ("STOP_REASON_MAX_TOKENS",)),
    _anthropic("stop_reason refusal", "refusal", ("STOP_REASON_REFUSAL",)),
    _anthropic("tool input that is not JSON", "bad-args:calculate", (TEXT,), ("calculate",),
               must_say="invalid arguments"),
    _anthropic("duplicate tool_use ids", "dup-ids:current_time", (TEXT,), ("current_time",),
               unique_ids=True),
    _anthropic("an endless tool loop", "loop:current_time", (MAX,), ("current_time",),
               max_iterations=4),
]


async def _case(category: Category, client: Client, ledger: Ledger, scenario: Scenario,
                host: str) -> None:
    config = {"max_iterations": scenario.max_iterations} if scenario.max_iterations else {}
    model = f"fault.{scenario.model}"
    if scenario.wire == "anthropic":
        model = f"{ANTHROPIC}/{model}"
    session = await client.new_session(model, scenario.tools, **config)
    turn = await client.turn(session, timeout=scenario.timeout)
    verdict, detail = judge_turn(turn, set(scenario.expected))
    done = turn.done
    texts = [done.error if done else ""] + [r.error or r.output for r in turn.results()]
    wanted = scenario.must_say.replace("{host}", host)
    if verdict == CLEAR and wanted and not any(wanted in t for t in texts):
        verdict, detail = UNCLEAR, f"no {wanted!r} in: {texts[0][:120] or texts[-1][:120]}"
    if verdict == CLEAR and scenario.unique_ids:
        ids = [c.id for m in await client.messages(session) for c in m.tool_calls]
        if len(ids) != len(set(ids)) or "" in ids:
            verdict, detail = UNCLEAR, f"tool-call ids stored as {ids}"
    if scenario.known == 5:
        size = f", `done` {turn.done.ByteSize() / 1e6:.1f} MB" if turn.done is not None else ""
        category.figures["StreamTo of a 30 MB answer"] = f"{turn.describe()}{size}"
    lost = invalid = 0
    try:
        await ledger.record(client, session)
        lost, invalid = await ledger.audit(client, session)
    except grpc.aio.AioRpcError as exc:  # an unreadable session is the finding
        verdict, detail = UNCLEAR, f"history unreadable after the run: {judge(exc)[1]}"
    category.add(scenario.name, verdict, detail, lost=lost, invalid=invalid, known=scenario.known)


async def _refused(category: Category, stack: Stack) -> None:
    """A model endpoint where nothing listens: connection refused."""
    nowhere = model_proc(stack.work, "model-nowhere")
    nowhere.port = free_port()
    runtime = runtime_proc(stack.work, nowhere, stack.tools, name="runtime-refused")
    stack.extra.append(runtime)
    await stack.start_runtime(runtime)
    async with Client(runtime.address) as client:
        session = await client.new_session()
        turn = await client.turn(session, timeout=60)
    verdict, detail = judge_turn(turn, {ERROR})
    if verdict == CLEAR and f"127.0.0.1:{nowhere.port}" not in turn.done.error:
        verdict, detail = UNCLEAR, f"the error does not name the endpoint: {turn.done.error[:120]}"
    category.add("connection refused", verdict, detail)
    await runtime.stop()


async def run(category: Category, work, quick: bool) -> None:
    work.mkdir(parents=True, exist_ok=True)
    anthropic = model_proc(work, "model-anthropic", wire="anthropic")
    anthropic.spawn()
    try:
        await anthropic.wait_listening()
        await _run(category, work, quick, anthropic)
    finally:
        await anthropic.stop(10)


async def _run(category: Category, work, quick: bool, anthropic) -> None:
    providers = json.dumps([{
        "name": ANTHROPIC, "kind": "anthropic", "base_url": f"http://127.0.0.1:{anthropic.port}",
        "read_timeout": 4, "max_retries": 2,
    }])
    async with Stack.create(work, providers=providers) as stack, \
            Client(stack.runtime.address) as client:
        ledger = Ledger()
        hosts = {"openai": f"127.0.0.1:{stack.model.port}", "anthropic": f"127.0.0.1:{anthropic.port}"}
        for scenario in [*SCENARIOS, *ANTHROPIC_SCENARIOS]:
            if quick and not scenario.quick:
                continue
            await _case(category, client, ledger, scenario, hosts[scenario.wire])
        await _refused(category, stack)
        lost, invalid = await ledger.audit_all(client)
        alive = stack.runtime.alive()
        category.add("every history intact at the end; the runtime still serves",
                     CLEAR if alive else "crash", lost=lost, invalid=invalid)
