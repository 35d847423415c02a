"""Graceful drain of real processes on SIGTERM.

`python -m pilothouse.app.main` runs as a subprocess against the fake
model of this test process (held mid-answer with `Pause`) and the test
ToolExecutor, with a SQLite store so the history can be read after the
process has gone. State is awaited by bounded polling of health and of the
streams, never by sleeping. Also: `pilothouse-tools` drains its in-flight
calls, and a store outage turns the runtime's health NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.app.startup import AGENT_SERVICE, RUN_SERVICE, SESSION_SERVICE, start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.errors import UnavailableError
from pilothouse.runtime.store.factory import open_store
from pilothouse.testmodel import Pause, SSEReply, text_reply
from pilothouse.toolexecutor.service import SERVICE_NAME as EXECUTOR_SERVICE, serve_tools
from pilothouse.v1 import (
    event_pb2,
    tool_executor_service_pb2 as tools_pb,
    tool_executor_service_pb2_grpc as tools_grpc,
)
from tests.conftest import ToolServer, app_settings, build_test_tools, collect, wait_until

RUNTIME_SERVICES = ["", AGENT_SERVICE, SESSION_SERVICE, RUN_SERVICE]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("PILOTHOUSE_", "OTEL_", "OPENAI_"))
    }
    return {**env, "PYTHONUNBUFFERED": "1", **values}


class ServerProcess:
    """A `pilothouse-server` subprocess and a client of it."""

    def __init__(self, process: asyncio.subprocess.Process, address: str) -> None:
        self.process = process
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.client = PilothouseClient(channel=self.channel)

    async def status(self, service: str = "") -> int:
        reply = await self.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, wait_for_ready=True
        )
        return reply.status

    async def wait_status(self, wanted: int, services=("",), timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            for service in services:
                while await self.status(service) != wanted:  # noqa: ASYNC110 - bounded health polling
                    await asyncio.sleep(0.01)

    async def exit_code(self, timeout: float = 30) -> tuple[int, str]:
        _, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        return self.process.returncode, stderr.decode()

    async def close(self) -> None:
        await self.channel.close()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_server_process(model_server, tool_server, tmp_path: Path, **env: str) -> ServerProcess:
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.app.main",
        env=clean_env(**{
            "PILOTHOUSE_LISTEN_ADDRESS": address,
            "PILOTHOUSE_MODEL_BASE_URL": model_server.base_url,
            "PILOTHOUSE_MODEL": "fake-model",
            "PILOTHOUSE_TOOL_EXECUTORS": tool_server.address,
            "PILOTHOUSE_STORE_URL": f"sqlite:///{tmp_path / 'sessions.db'}",
            "PILOTHOUSE_DATA_DIR": str(tmp_path),
            "PILOTHOUSE_METRICS_PORT": "0",
            "PILOTHOUSE_GENERATE_TITLES": "false",
            "PILOTHOUSE_LOG_FORMAT": "json",
            **env,
        }),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    server = ServerProcess(process, address)
    try:
        await server.wait_status(SERVING)
    except BaseException:
        await server.close()
        raise
    return server


def held_text(text: str, release: asyncio.Event) -> SSEReply:
    """A text reply that stops after its first delta until `release` is set."""
    events = text_reply(text, chunk_size=4).events
    return SSEReply([*events[:2], Pause(release), *events[2:]])


async def until(stream, kind: str) -> list[event_pb2.AgentEvent]:
    events = []
    async for event in stream:
        events.append(event)
        if event.WhichOneof("event") == kind:
            return events
    raise AssertionError(f"stream ended before {kind}")


async def stored_history(tmp_path: Path, session_id: str):
    store = await open_store(f"sqlite:///{tmp_path / 'sessions.db'}", data_dir=tmp_path)
    try:
        record = await store.get(session_id)
        return record, await store.load_history(session_id)
    finally:
        await store.close()


async def test_sigterm_drains_an_active_run_then_exits_zero(
    model_server, tool_server, fake_model, tmp_path
):
    # Spans exported (to stdout) so that the run has trace ids of its own to log.
    server = await start_server_process(
        model_server, tool_server, tmp_path, PILOTHOUSE_SHUTDOWN_GRACE="60",
        OTEL_TRACES_EXPORTER="console",
    )
    release = asyncio.Event()
    try:
        client = server.client
        await client.create_agent("drainer", model="fake-model")
        session_id = (await client.create_session("drainer", "ops")).id
        other_session = (await client.create_session("drainer", "ops-2")).id
        fake_model.responder.push(held_text("Finished despite the drain.", release))
        stream = client.stream_to(session_id, "Go")
        events = await until(stream, "text_delta")  # the model is held mid-answer

        server.process.send_signal(signal.SIGTERM)

        # Every service NOT_SERVING at once; the server still answers.
        await server.wait_status(NOT_SERVING, RUNTIME_SERVICES)
        # New runs are refused, retryably.
        with pytest.raises(PilothouseRpcError) as refused:
            await anext(client.stream_to(other_session, "Anyone there?"))
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert refused.value.reason == "DRAINING"
        assert server.process.returncode is None  # still waiting for the run

        release.set()  # the model finishes its answer
        events += await collect(stream)  # the stream ends cleanly after `done`
        done = events[-1].done
        assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
        assert done.final_response == "Finished despite the drain."
        code, stderr = await server.exit_code()
    finally:
        release.set()
        await server.close()
    assert code == 0, stderr

    # The history was stored before `done`; the session is idle.
    record, history = await stored_history(tmp_path, session_id)
    assert [(m.role.value, m.content) for m in history] == [
        ("user", "Go"), ("assistant", "Finished despite the drain.")
    ]
    assert record.last_run_stop_reason == "text_response" and not record.active_run_id

    # One JSON line per run end, with its figures and trace context.
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    ends = [line for line in lines if line.get("run_id") == events[0].run_id
            and "stop_reason" in line]
    assert len(ends) == 1
    end = ends[0]
    assert end["stop_reason"] == "text_response" and end["session_id"] == session_id
    assert end["duration_s"] > 0 and "input_tokens" in end and "output_tokens" in end
    assert len(end["trace_id"]) == 32 and len(end["span_id"]) == 16
    assert "Finished despite" not in stderr and "Go" not in [line["message"] for line in lines]


async def test_a_second_sigterm_cancels_what_outlives_the_drain_with_a_valid_history(
    model_server, tool_server, fake_model, tmp_path
):
    """(A run still going when the grace ends is handed over instead: see
    test_durable_runs.py.)"""
    how = "second_sigterm"
    grace = "60"
    server = await start_server_process(
        model_server, tool_server, tmp_path, PILOTHOUSE_SHUTDOWN_GRACE=grace
    )
    release = asyncio.Event()
    try:
        client = server.client
        await client.create_agent("stubborn", model="fake-model")
        session_id = (await client.create_session("stubborn", "ops")).id
        fake_model.responder.push(held_text("This answer never ends.", release))
        stream = client.stream_to(session_id, "Go")
        events = await until(stream, "text_delta")

        server.process.send_signal(signal.SIGTERM)
        if how == "second_sigterm":
            await server.wait_status(NOT_SERVING)
            server.process.send_signal(signal.SIGTERM)

        events += await collect(stream)
        done = events[-1].done
        assert done.stop_reason == event_pb2.STOP_REASON_CANCELLED
        assert "shutting down" in done.error
        code, stderr = await server.exit_code()
    finally:
        release.set()
        await server.close()
    assert code == 0, stderr
    record, history = await stored_history(tmp_path, session_id)
    # The interrupted round left no trace: only the user's message is stored.
    assert [(m.role.value, m.content) for m in history] == [("user", "Go")]
    assert record.last_run_stop_reason == "cancelled" and not record.active_run_id


# --- pilothouse-tools ------------------------------------------------------------

HOLDING_TOOLS = """
import asyncio, sys
from pilothouse.toolexecutor import ToolRegistry
from pilothouse.toolexecutor import main

registry = ToolRegistry()

@registry.tool
async def hold(label: str) -> str:
    '''Wait for a line on stdin and return it.

    Args:
        label: Printed when the call starts.
    '''
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), ready.set)
    print(f"holding {label}", flush=True)
    try:
        await ready.wait()
    except asyncio.CancelledError:
        print(f"cancelled {label}", flush=True)
        raise
    finally:
        loop.remove_reader(sys.stdin.fileno())
    return sys.stdin.readline().strip()

sys.exit(main.main(sys.argv[1:], registry=registry))
"""


async def start_tools_process(port: int, **env: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDING_TOOLS, "--listen", f"127.0.0.1:{port}",
        env=clean_env(PILOTHOUSE_TOOLS_METRICS_PORT="0", **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.decode().startswith("pilothouse-tools listening on"), line
    return process


@pytest.mark.parametrize("signals", [1, 2])
async def test_pilothouse_tools_drains_in_flight_calls(signals):
    port = free_port()
    process = await start_tools_process(port, PILOTHOUSE_TOOLS_SHUTDOWN_GRACE="60")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = tools_grpc.ToolExecutorServiceStub(channel)
            call = asyncio.ensure_future(stub.ExecuteTool(
                tools_pb.ExecuteToolRequest(name="hold", arguments_json='{"label": "a"}'),
                timeout=60,
            ))
            assert (await asyncio.wait_for(process.stdout.readline(), 10)).strip() == b"holding a"

            process.send_signal(signal.SIGTERM)
            # New work is refused at once (the server said GOAWAY); the call goes on.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                health = health_pb2_grpc.HealthStub(fresh)
                async with asyncio.timeout(10):
                    while True:
                        try:
                            reply = await health.Check(
                                health_pb2.HealthCheckRequest(service=EXECUTOR_SERVICE), timeout=5
                            )
                        except grpc.aio.AioRpcError as exc:  # refused by the stopping server
                            assert exc.code() in {
                                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED
                            }
                            break
                        if reply.status == NOT_SERVING:
                            break
                        await asyncio.sleep(0.01)
            assert not call.done()

            if signals == 1:
                process.stdin.write(b"released\n")
                await process.stdin.drain()
                reply = await call
                assert reply.output == "released"
            else:
                process.send_signal(signal.SIGTERM)
                assert (await asyncio.wait_for(process.stdout.readline(), 10)).strip() == b"cancelled a"
                with pytest.raises(grpc.aio.AioRpcError):
                    await call
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- health follows the dependencies ---------------------------------------------


async def test_health_is_not_serving_while_the_store_is_unreachable(model_server, tool_server):
    app = await start_app(
        app_settings(model_server, tool_server, metrics_port=0, health_check_interval=0.05)
    )
    store = app.runtime.store
    original = store.get
    outage = asyncio.Event()

    async def get(session_id: str):
        if outage.is_set():
            raise UnavailableError("the database is down")
        return await original(session_id)

    store.get = get  # the probe goes through this
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> int:
                return (await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5)).status

            outage.set()
            await wait_until(lambda: not app.health.up["session_store"])
            assert await status(RUN_SERVICE) == NOT_SERVING
            assert await status(SESSION_SERVICE) == NOT_SERVING
            assert await status("") == NOT_SERVING
            assert await status(AGENT_SERVICE) == SERVING  # liveness: the process is fine

            outage.clear()
            await wait_until(lambda: app.health.up["session_store"])
            for service in RUNTIME_SERVICES:
                assert await status(service) == SERVING
    finally:
        store.get = original
        await app.stop(0)


async def test_health_can_require_the_tool_executors(model_server, tool_server):
    tools = await serve_tools(build_test_tools(), "127.0.0.1:0")
    executor = ToolServer(tools, f"127.0.0.1:{tools.port}")
    app = await start_app(app_settings(
        model_server, executor, metrics_port=0, health_check_interval=0.05,
        health_requires_tool_executors=True,
    ))
    try:
        assert app.health.up == {"session_store": True, "tool_executors": True}
        await tools.enter_drain()  # the executor reports NOT_SERVING
        await wait_until(lambda: not app.health.up["tool_executors"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            run = await health.Check(health_pb2.HealthCheckRequest(service=RUN_SERVICE), timeout=5)
            session = await health.Check(
                health_pb2.HealthCheckRequest(service=SESSION_SERVICE), timeout=5
            )
        assert run.status == NOT_SERVING and session.status == SERVING
    finally:
        await app.stop(0)
        await tools.stop(0)
