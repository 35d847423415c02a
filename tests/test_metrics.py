"""Metrics as Prometheus scrapes them: a runtime with its own metrics port,
three runs (tools, steering, a cancel), then the values and labels of the
GenAI and runtime metrics on `GET /metrics`."""

from __future__ import annotations

import asyncio
import json
import socket

import grpc
import httpx
import pytest_asyncio
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.ops.metrics import start_metrics
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.toolexecutor import default_registry
from pilothouse.toolexecutor.metrics import ToolExecutorMetrics
from pilothouse.toolexecutor.service import serve_tools
from pilothouse.v1 import (
    event_pb2,
    tool_executor_service_pb2 as tools_pb,
    tool_executor_service_pb2_grpc as tools_grpc,
)
from tests.conftest import GATES, ObservedGate, app_settings, collect

AGENT = "metered"
MODEL = "metrics-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scrape:
    """One scrape: samples by name, looked up by label subsets."""

    def __init__(self, text: str) -> None:
        self.samples = [
            s for family in text_string_to_metric_families(text) for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(
            s.value for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


@pytest_asyncio.fixture(loop_scope="session")
async def metered_app(model_server, tool_server):
    app = await start_app(
        app_settings(model_server, tool_server, metrics_port=free_port(), metrics_host="127.0.0.1")
    )
    yield app
    await app.stop(0)


async def scrape(app) -> Scrape:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def held(reply: SSEReply, after: int, release: asyncio.Event) -> SSEReply:
    """`reply` paused after its first `after` items until `release` is set."""
    return SSEReply([*reply.events[:after], Pause(release), *reply.events[after:]])


async def until(stream, kind: str) -> list[event_pb2.AgentEvent]:
    events = []
    async for event in stream:
        events.append(event)
        if event.WhichOneof("event") == kind:
            return events
    raise AssertionError(f"stream ended before {kind}")


async def test_prometheus_scrape_after_a_conversation(metered_app, fake_model):
    async with PilothouseClient(f"127.0.0.1:{metered_app.port}") as client:
        await client.create_agent(AGENT, tools=("calculate", "fail", "wait_for_gate"), model=MODEL)
        session_id = (await client.create_session(AGENT, "meter")).id

        # Run 1: two tool calls (one fails), then the answer.
        fake_model.responder.push(
            tool_calls_reply(
                [("c1", "calculate", json.dumps({"expression": "6*7"})),
                 ("c2", "fail", json.dumps({"message": "boom"}))],
                usage={"prompt_tokens": 11, "completion_tokens": 7},
            ),
            text_reply("42.", usage={"prompt_tokens": 20, "completion_tokens": 3}),
        )
        first = await collect(client.stream_to(session_id, "Compute"))
        assert first[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE

        # Run 2: steered while its first round is held.
        release = asyncio.Event()
        calls = tool_calls_reply(
            [("c3", "calculate", json.dumps({"expression": "1+1"}))],
            usage={"prompt_tokens": 5, "completion_tokens": 2},
        )
        fake_model.responder.push(
            held(calls, len(calls.events) - 3, release),  # held after the call, before finish
            text_reply("2, and noted.", usage={"prompt_tokens": 9, "completion_tokens": 1}),
        )
        stream = client.stream_to(session_id, "Again")
        events = await until(stream, "tool_calls_begin")
        await client.steer_session(session_id, "Also note this")
        release.set()
        events += await collect(stream)
        assert "user_steered" in [e.WhichOneof("event") for e in events]

        # Run 3: held mid-answer (the gauges see it active), then cancelled.
        release = asyncio.Event()
        fake_model.responder.push(held(text_reply("Never finished", chunk_size=4), 2, release))
        stream = client.stream_to(session_id, "Third")
        events = await until(stream, "text_delta")
        during = await scrape(metered_app)
        assert during.value("pilothouse_runs_active") == 1
        await client.cancel(session_id, events[0].run_id, "stop")
        events += await collect(stream)
        assert events[-1].done.stop_reason == event_pb2.STOP_REASON_CANCELLED
        release.set()

        # Run 4: cancelled while its tool call runs.
        observed = GATES["metrics-cancel"] = ObservedGate()
        fake_model.responder.push(
            tool_calls_reply([("c4", "wait_for_gate", json.dumps({"name": "metrics-cancel"}))])
        )
        stream = client.stream_to(session_id, "Fourth")
        events = await until(stream, "tool_calls_begin")
        await asyncio.wait_for(observed.entered.wait(), 10)  # the executor runs the tool
        await client.cancel(session_id, events[0].run_id, "stop waiting")
        events += await collect(stream)
        assert events[-1].done.stop_reason == event_pb2.STOP_REASON_CANCELLED
        observed.set()

    # Runs are counted just after `done`: wait for the last one.
    async def runs_counted() -> float:
        return (await scrape(metered_app)).value("pilothouse_run_duration_seconds_count", gen_ai_agent_name=AGENT)

    async with asyncio.timeout(10):
        while await runs_counted() < 4:  # noqa: ASYNC110 - bounded poll of an HTTP endpoint
            await asyncio.sleep(0.01)
    m = await scrape(metered_app)

    # Runs by stop reason, cancellations, steering.
    assert m.value("pilothouse_run_duration_seconds_count", gen_ai_agent_name=AGENT,
                   pilothouse_run_stop_reason="text_response") == 2
    assert m.value("pilothouse_run_duration_seconds_count", gen_ai_agent_name=AGENT,
                   pilothouse_run_stop_reason="cancelled") == 2
    assert m.value("pilothouse_run_cancellations_total", gen_ai_agent_name=AGENT) == 2
    assert m.value("pilothouse_run_steering_messages_total", gen_ai_agent_name=AGENT) == 1

    # Tool calls by tool and outcome.
    assert m.value("pilothouse_tool_duration_seconds_count", gen_ai_tool_name="calculate",
                   pilothouse_tool_outcome="ok") == 2
    assert m.value("pilothouse_tool_duration_seconds_count", gen_ai_tool_name="fail",
                   pilothouse_tool_outcome="error") == 1
    assert m.value("pilothouse_tool_duration_seconds_count", gen_ai_tool_name="wait_for_gate",
                   pilothouse_tool_outcome="cancelled") == 1

    # GenAI client metrics: rounds, tokens by type, time to first chunk.
    model = {"gen_ai_request_model": MODEL, "gen_ai_operation_name": "chat"}
    rounds = m.labels("gen_ai_client_operation_duration_seconds_count")
    assert m.value("gen_ai_client_operation_duration_seconds_count", **model) == 6
    assert m.value("gen_ai_client_operation_duration_seconds_count", **model,
                   error_type="cancelled") == 1
    assert {r.get("gen_ai_provider_name") for r in rounds if r.get("gen_ai_request_model") == MODEL} == {"openai"}
    assert m.value("gen_ai_client_token_usage_count", **model, gen_ai_token_type="input") == 4
    assert m.value("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="input") == 11 + 20 + 5 + 9
    assert m.value("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="output") == 7 + 3 + 2 + 1
    assert m.value("gen_ai_client_operation_time_to_first_chunk_seconds_count", **model) == 6

    # Events sent on this server's streams, by type.
    assert m.value("pilothouse_events_sent_total", rpc_method="StreamTo", pilothouse_event_type="done") == 4
    assert m.value("pilothouse_events_sent_total", rpc_method="StreamTo",
                   pilothouse_event_type="tool_result") == 4  # the cancelled call's result too
    assert m.value("pilothouse_events_sent_total", rpc_method="StreamTo",
                   pilothouse_event_type="user_steered") == 1

    # Gauges over live state.
    assert m.value("pilothouse_runs_active") == 0
    assert m.value("pilothouse_sessions_cached") >= 1
    assert m.value("pilothouse_runtime_draining") == 0
    assert m.value("pilothouse_dependency_up", pilothouse_dependency="session_store") == 1
    assert m.value("pilothouse_dependency_up", pilothouse_dependency="tool_executors") == 1


async def test_metrics_port_zero_serves_nothing(model_server, tool_server):
    app = await start_app(app_settings(model_server, tool_server, metrics_port=0))
    try:
        assert app.metrics_port == 0
        assert "pilothouse_runs_active" in app.metrics.scrape()  # still collected in-process
    finally:
        await app.stop(0)


async def test_a_busy_metrics_port_does_not_stop_the_server(model_server, tool_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app = await start_app(app_settings(model_server, tool_server, metrics_port=port))
        try:
            assert app.metrics_port == 0
            async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
                assert await client.list_agents() is not None
        finally:
            await app.stop(0)


async def test_tool_executor_metrics():
    """The executor's own view of its calls, on a server with metrics."""
    pipeline = await start_metrics(Resource.create({}), port=0, readers=[])
    server = await serve_tools(
        default_registry, "127.0.0.1:0", metrics=ToolExecutorMetrics(pipeline.meter())
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = tools_grpc.ToolExecutorServiceStub(channel)
            for expression in ("1+2", "1/0"):
                await stub.ExecuteTool(
                    tools_pb.ExecuteToolRequest(
                        name="calculate", arguments_json=json.dumps({"expression": expression})
                    ),
                    timeout=10,
                )
        m = Scrape(pipeline.scrape())
    finally:
        await server.stop(0)
        await pipeline.shutdown()
    assert m.value("pilothouse_tool_executor_call_duration_seconds_count",
                   gen_ai_tool_name="calculate") == 2
    outcomes = {
        labels["pilothouse_tool_outcome"]
        for labels in m.labels("pilothouse_tool_executor_call_duration_seconds_count")
    }
    assert outcomes == {"ok", "error"}
    assert m.value("pilothouse_tool_executor_calls_active") == 0
