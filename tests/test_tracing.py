"""Traces across processes: a client's trace context reaches the run, the
runtime's spans follow the GenAI semantic conventions, and the
ToolExecutor's server span hangs under the runtime's `execute_tool` span.
Real servers on real ports (in this process, so one in-memory exporter
sees both sides); logs carry the trace ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys

import grpc
import httpx
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.ops import logs, telemetry
from pilothouse.testmodel import text_reply, tool_calls_reply
from tests.conftest import CANCELLED_GATES, GATES, ObservedGate, app_settings, collect, wait_until
from tests.test_drain import clean_env, free_port, start_server_process

STREAM_TO = "/pilothouse.v1.RunService/StreamTo"
EXECUTE_TOOL = "/pilothouse.v1.ToolExecutorService/ExecuteTool"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the process's tracer provider (installed
    once per process; added to the one already installed if any)."""
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("pilothouse-test", provider=TracerProvider(), exporter=exporter)
    return exporter


@pytest_asyncio.fixture(loop_scope="session")
async def traced_client(app, exporter):
    """A client whose channel carries OpenTelemetry's client interceptors,
    as an instrumented application's would."""
    async with PilothouseClient(
        f"127.0.0.1:{app.port}", interceptors=telemetry.tracing_client_interceptors()
    ) as client:
        yield client


def spans_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind is kind)]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_conversation_with_a_tool_call_is_one_trace_tree(
    traced_client, exporter, fake_model, make_agent
):
    agent = await make_agent(("calculate",), model="trace-model")
    session_id = (await traced_client.create_session(agent, "tracer")).id
    fake_model.responder.push(
        tool_calls_reply(
            [("call_1", "calculate", json.dumps({"expression": "6*7"}))],
            usage={"prompt_tokens": 12, "completion_tokens": 5},
        ),
        text_reply("It is 42.", usage={"prompt_tokens": 30, "completion_tokens": 4}),
    )
    tracer = trace.get_tracer("test-client")
    with tracer.start_as_current_span("client request") as root:
        events = await collect(traced_client.stream_to(session_id, "What is 6*7?"))
    assert events[-1].done.final_response == "It is 42."
    trace_id = root.get_span_context().trace_id
    run_id = events[0].run_id

    def finished(name: str) -> bool:
        return any(s.name == name for s in spans_of(exporter, trace_id))

    await wait_until(lambda: finished(f"invoke_agent {agent}"))  # ends just after `done`
    spans = spans_of(exporter, trace_id)

    # client → runtime RPC → run
    client_call = one(spans, STREAM_TO, SpanKind.CLIENT)
    server_call = one(spans, STREAM_TO, SpanKind.SERVER)
    run = one(spans, f"invoke_agent {agent}")
    assert parent_of(client_call) == root.get_span_context().span_id
    assert parent_of(server_call) == client_call.context.span_id
    assert parent_of(run) == server_call.context.span_id
    # run_started names the trace (and the run span's parent) for clients
    # such as the web console
    version, traced, parent, flags = events[0].run_started.traceparent.split("-")
    assert (version, traced, parent) == ("00", f"{trace_id:032x}", f"{server_call.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.agent.name"] == agent
    assert run.attributes["gen_ai.conversation.id"] == session_id
    assert run.attributes["pilothouse.run.id"] == run_id
    assert run.attributes["pilothouse.run.stop_reason"] == "text_response"

    # two model rounds under the run
    chats = sorted((s for s in spans if s.name == "chat trace-model"), key=lambda s: s.start_time)
    assert len(chats) == 2
    for chat, (tokens_in, tokens_out, finish) in zip(
        chats, [(12, 5, "tool_calls"), (30, 4, "stop")], strict=True
    ):
        assert parent_of(chat) == run.context.span_id
        assert chat.kind is SpanKind.CLIENT
        a = chat.attributes
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "trace-model"
        assert a["gen_ai.response.model"] == "fake-model"
        assert tuple(a["gen_ai.response.finish_reasons"]) == (finish,)
        assert a["gen_ai.usage.input_tokens"] == tokens_in
        assert a["gen_ai.usage.output_tokens"] == tokens_out
        assert a["gen_ai.conversation.id"] == session_id
        assert a["pilothouse.time_to_first_chunk_ms"] >= 0
        assert "gen_ai.input.messages" not in a  # contents only when opted in

    # the tool call: runtime span → gRPC client span → the executor's server span
    tool = one(spans, "execute_tool calculate")
    assert parent_of(tool) == run.context.span_id
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "calculate"
    assert tool.attributes["gen_ai.tool.call.id"] == "call_1"
    assert tool.attributes["gen_ai.tool.type"] == "function"
    assert tool.status.status_code is not StatusCode.ERROR
    assert "gen_ai.tool.call.arguments" not in tool.attributes
    tool_rpc = one(spans, EXECUTE_TOOL, SpanKind.CLIENT)
    executor = one(spans, EXECUTE_TOOL, SpanKind.SERVER)
    assert parent_of(tool_rpc) == tool.context.span_id
    assert parent_of(executor) == tool_rpc.context.span_id
    assert chats[0].end_time <= tool.start_time <= tool.end_time <= chats[1].start_time

    # nothing of this conversation went to another trace, and no probe was traced
    assert {s.context.trace_id for s in spans} == {trace_id}
    assert not [s for s in exporter.get_finished_spans() if "grpc.health" in s.name]


async def test_a_failed_tool_call_is_an_error_span(client, exporter, fake_model, make_agent):
    agent = await make_agent(("fail",))
    session_id = (await client.create_session(agent, "tracer")).id
    fake_model.responder.push(
        tool_calls_reply([("call_f", "fail", json.dumps({"message": "boom"}))]),
        text_reply("It failed."),
    )
    events = await collect(client.stream_to(session_id, "Try it"))
    run_id = events[0].run_id

    def run_span():
        return next(
            (s for s in exporter.get_finished_spans()
             if s.attributes.get("pilothouse.run.id") == run_id),
            None,
        )

    await wait_until(lambda: run_span() is not None)
    # Without a caller's context the run's trace starts at the runtime's server span.
    spans = spans_of(exporter, run_span().context.trace_id)
    server_call = one(spans, STREAM_TO, SpanKind.SERVER)
    assert server_call.parent is None or server_call.parent.is_remote
    tool = one(spans, "execute_tool fail")
    assert tool.status.status_code is StatusCode.ERROR
    assert "boom" in tool.status.description


async def test_cancelling_a_run_cancels_the_traced_tool_rpc(client, exporter, fake_model, make_agent):
    agent = await make_agent(("wait_for_gate",))
    session_id = (await client.create_session(agent, "tracer")).id
    observed = GATES["trace-cancel"] = ObservedGate()
    fake_model.responder.push(
        tool_calls_reply([("call_w", "wait_for_gate", json.dumps({"name": "trace-cancel"}))])
    )
    stream = client.stream_to(session_id, "Wait")
    first = await anext(stream)
    await asyncio.wait_for(observed.entered.wait(), 10)  # the executor is running the tool
    await client.cancel(session_id, first.run_id, "enough")
    rest = await collect(stream)
    assert rest[-1].done.error == "enough"

    await wait_until(lambda: "trace-cancel" in CANCELLED_GATES)  # the executor saw the cancel

    def rpc_span():
        return next(
            (s for s in exporter.get_finished_spans()
             if s.name == EXECUTE_TOOL and s.kind is SpanKind.CLIENT
             and s.attributes.get("rpc.grpc.status_code") == grpc.StatusCode.CANCELLED.value[0]),
            None,
        )

    await wait_until(lambda: rpc_span() is not None)  # the client span was ended, not leaked
    assert rpc_span().status.status_code is StatusCode.ERROR


async def test_contents_are_recorded_only_when_opted_in(
    model_server, tool_server, exporter, fake_model
):
    app = await start_app(
        app_settings(model_server, tool_server, record_content=True, metrics_port=0)
    )
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent(
                "recorder", tools=("calculate",), system_prompt="Be exact.", model="content-model"
            )
            session_id = (await client.create_session("recorder", "tracer")).id
            fake_model.responder.push(
                tool_calls_reply([("call_c", "calculate", json.dumps({"expression": "2+2"}))]),
                text_reply("Four."),
            )
            events = await collect(client.stream_to(session_id, "Add 2 and 2"))
        run_id = events[0].run_id
        await wait_until(
            lambda: any(s.attributes.get("pilothouse.run.id") == run_id
                        for s in exporter.get_finished_spans())
        )
    finally:
        await app.stop(0)
    run = next(s for s in exporter.get_finished_spans()
               if s.attributes.get("pilothouse.run.id") == run_id)
    spans = spans_of(exporter, run.context.trace_id)
    first, second = sorted(
        (s for s in spans if s.name == "chat content-model"), key=lambda s: s.start_time
    )
    assert json.loads(first.attributes["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Be exact."}
    ]
    inputs = json.loads(first.attributes["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "Add 2 and 2"}]}]
    outputs = json.loads(first.attributes["gen_ai.output.messages"])
    assert outputs[0]["finish_reason"] == "tool_calls"
    assert outputs[0]["parts"] == [
        {"type": "tool_call", "id": "call_c", "name": "calculate", "arguments": {"expression": "2+2"}}
    ]
    later = json.loads(second.attributes["gen_ai.input.messages"])
    assert later[-1]["role"] == "tool" and later[-1]["parts"][0]["id"] == "call_c"
    assert json.loads(second.attributes["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "text", "content": "Four."}
    ]
    tool = one(spans, "execute_tool calculate")
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"expression": "2+2"}
    assert tool.attributes["gen_ai.tool.call.result"] == "4"


async def test_a_named_provider_names_itself_on_the_chat_span(
    traced_client, exporter, anthropic_model, make_agent
):
    from pilothouse.testmodel.anthropic import anthropic_text_reply

    agent = await make_agent(model="anthropic/claude-fake-1")
    session_id = (await traced_client.create_session(agent, "tracer")).id
    anthropic_model.responder.push(anthropic_text_reply("Hi.", input_tokens=4, cache_read=20))
    events = await collect(traced_client.stream_to(session_id, "Hello"))
    run_id = events[0].run_id
    await wait_until(lambda: any(s.attributes.get("pilothouse.run.id") == run_id
                                 for s in exporter.get_finished_spans()))
    run = next(s for s in exporter.get_finished_spans()
               if s.attributes.get("pilothouse.run.id") == run_id)
    chat = one(spans_of(exporter, run.context.trace_id), "chat anthropic/claude-fake-1")
    assert chat.attributes["gen_ai.provider.name"] == "anthropic"
    assert chat.attributes["gen_ai.request.model"] == "claude-fake-1"
    assert chat.attributes["gen_ai.response.model"] == "claude-fake-1"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 24
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 20
    assert tuple(chat.attributes["gen_ai.response.finish_reasons"]) == ("stop",)


# --- set-up from the environment ----------------------------------------------


def test_exporters_follow_the_standard_variables(monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry.exporters_from_env() == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert [type(e) for e in telemetry.exporters_from_env()] == [ConsoleSpanExporter]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.exporters_from_env() == []
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    exporters = telemetry.exporters_from_env()
    assert [type(e) for e in exporters] == [OTLPSpanExporter]
    exporters[0].shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-runtime")
    assert telemetry.resource_for("pilothouse-server").attributes["service.name"] == "my-runtime"


def test_nothing_to_export_installs_no_tracer_provider():
    """Each case in a fresh process (the global provider is set once)."""
    probe = (
        "from pilothouse.ops import telemetry\n"
        "provider = telemetry.configure_tracing('probe')\n"
        "print(type(provider).__name__, type(telemetry.installed_tracer_provider()).__name__)\n"
    )

    def run(**env: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe], env=clean_env(**env),
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip()

    assert run() == "NoneType NoneType"
    assert run(OTEL_TRACES_EXPORTER="none") == "NoneType NoneType"
    assert run(OTEL_TRACES_EXPORTER="console") == "TracerProvider TracerProvider"


async def test_a_runtime_exporting_nothing_passes_the_trace_on_and_counts_every_run(
    exporter, fake_model, tool_server, tmp_path
):
    """A runtime process with no exporter records no spans, yet the caller's
    trace context still reaches the ToolExecutor (here in this process,
    exporting), and its metrics count the run, rounds and tool call."""
    metrics_port = free_port()
    server = await start_server_process(fake_model, tool_server, tmp_path,
                                        PILOTHOUSE_METRICS_PORT=str(metrics_port),
                                        PILOTHOUSE_METRICS_HOST="127.0.0.1")
    try:
        async with PilothouseClient(
            server.address, interceptors=telemetry.tracing_client_interceptors()
        ) as client:
            await client.create_agent("untraced", tools=("calculate",), model="quiet-model")
            session_id = (await client.create_session("untraced")).id
            fake_model.responder.push(
                tool_calls_reply([("call_1", "calculate", json.dumps({"expression": "6*7"}))]),
                text_reply("It is 42."),
            )
            with trace.get_tracer("test-client").start_as_current_span("client request") as root:
                events = await collect(client.stream_to(session_id, "What is 6*7?"))
        assert events[-1].done.final_response == "It is 42."
        trace_id = root.get_span_context().trace_id
        await wait_until(lambda: any(s.kind is SpanKind.SERVER and s.name == EXECUTE_TOOL
                                     for s in spans_of(exporter, trace_id)))
        spans = spans_of(exporter, trace_id)
        client_call = one(spans, STREAM_TO, SpanKind.CLIENT)
        executor = one(spans, EXECUTE_TOOL, SpanKind.SERVER)
        # The runtime's spans were no-ops carrying the caller's context: the
        # executor's span hangs under the client's call, in the same trace.
        assert parent_of(executor) == client_call.context.span_id
        assert {s.name for s in spans} == {"client request", STREAM_TO, EXECUTE_TOOL}
        traceparent = events[0].run_started.traceparent
        assert traceparent.split("-")[1:3] == [f"{trace_id:032x}", f"{client_call.context.span_id:016x}"]

        async with httpx.AsyncClient() as http:
            async def scrape() -> str:
                return (await http.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)).text

            async def counted() -> bool:
                return "pilothouse_run_duration_seconds_count" in await scrape()

            await wait_until(counted)
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(await scrape()) for s in family.samples
            }

        def total(name: str, **labels: str) -> float:
            return sum(v for (n, ls), v in samples.items()
                       if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

        assert total("pilothouse_run_duration_seconds_count", gen_ai_agent_name="untraced",
                     pilothouse_run_stop_reason="text_response") == 1
        assert total("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="quiet-model") == 2
        assert total("pilothouse_tool_duration_seconds_count", gen_ai_tool_name="calculate",
                     pilothouse_tool_outcome="ok") == 1
    finally:
        await server.close()


def test_json_log_lines_carry_the_trace_context():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        logs.configure_logging("INFO", "json", stream=out)
        log = logging.getLogger("pilothouse.test")
        log.info("outside")
        provider = TracerProvider()
        with provider.get_tracer("t").start_as_current_span("inside") as span:
            log.info("inside %s", "a span", extra={"run_id": "r1"})
            context = span.get_span_context()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert outside["message"] == "outside" and "trace_id" not in outside
    assert inside["message"] == "inside a span"
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["run_id"] == "r1"
    assert inside["level"] == "INFO" and inside["logger"] == "pilothouse.test"
