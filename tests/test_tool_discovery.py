"""ToolExecutors that come and go: the runtime starts without one, reports
it NOT_SERVING, discovers it when it comes up, and follows an executor
that restarts with other tools. Real servers on real ports."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.app.startup import RUN_SERVICE, start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.toolexecutor import ToolRegistry
from pilothouse.toolexecutor.builtins import register_builtins
from pilothouse.toolexecutor.service import serve_tools
from pilothouse.v1 import event_pb2
from tests.conftest import ToolServer, app_settings, collect, wait_until
from tests.test_drain import free_port


async def _run_service_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=RUN_SERVICE), timeout=5
        )
        return reply.status


async def _agent_created(client: PilothouseClient, name: str, tools: list[str]) -> bool:
    try:
        await client.create_agent(name, tools=tools)
    except PilothouseRpcError as exc:
        assert exc.code is grpc.StatusCode.FAILED_PRECONDITION
        assert exc.reason == "TOOL_NOT_AVAILABLE"
        return False
    return True


async def test_an_executor_absent_at_start_is_discovered_when_it_comes_up(fake_model, tool_server):
    address = f"127.0.0.1:{free_port()}"
    settings = app_settings(
        fake_model, tool_server, tool_executors=[address], tool_discovery_timeout=0.3,
        tool_rediscovery_interval=0.3, health_check_interval=0.2,
        health_requires_tool_executors=True, agents_file=None,
    )
    app = await start_app(settings)  # starts anyway
    tools = None
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            assert await _run_service_status(app.port) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not await _agent_created(client, "early", ["calculate"])
            assert "assistant" not in [a.config.name for a in await client.list_agents()]

            registry = ToolRegistry()
            register_builtins(registry)
            tools = await serve_tools(registry, address)

            await wait_until(lambda: _agent_created(client, "late", ["calculate"]), timeout=15)
            # The default agents file's agent was waiting for these tools.
            await wait_until(
                lambda: client.get_agent("assistant"), timeout=5
            )
            await wait_until(
                lambda: _serving(app.port), timeout=10
            )
            session = await client.create_session("late", "tester")
            fake_model.responder.push(
                tool_calls_reply([("c1", "calculate", '{"expression": "6*7"}')]), text_reply("42")
            )
            events = await collect(client.stream_to(session.id, "6*7?"))
    finally:
        await app.stop(0)
        if tools is not None:
            await tools.server.stop(0)
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.output == "42"
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE


async def _serving(port: int) -> bool:
    return await _run_service_status(port) == health_pb2.HealthCheckResponse.SERVING


def _registry(tool_name: str) -> ToolRegistry:
    registry = ToolRegistry()

    def echo(text: str) -> str:
        """Echo `text`.

        Args:
            text: Anything.
        """
        return text

    registry.register(echo, name=tool_name)
    return registry


async def test_an_executor_restarted_with_other_tools_is_followed(
    fake_model, tool_server: ToolServer, tmp_path
):
    address = f"127.0.0.1:{free_port()}"
    agents = tmp_path / "agents.toml"
    agents.write_text("")
    first = await serve_tools(_registry("alpha"), address)
    settings = app_settings(
        fake_model, tool_server, tool_executors=[address], tool_rediscovery_interval=0.3,
        agents_file=agents,
    )
    second = None
    try:
        app = await start_app(settings)
    except BaseException:
        await first.server.stop(0)
        raise
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            assert await _agent_created(client, "uses-alpha", ["alpha"])
            await first.server.stop(0)
            second = await serve_tools(_registry("beta"), address)
            await wait_until(lambda: _agent_created(client, "uses-beta", ["beta"]), timeout=15)

            # The old agent still runs; its vanished tool is an error result.
            session = await client.create_session("uses-alpha", "tester")
            fake_model.responder.push(
                tool_calls_reply([("c1", "alpha", '{"text": "hi"}')]), text_reply("alpha is gone")
            )
            events = await collect(client.stream_to(session.id, "echo hi"))
            agent = await client.get_agent("uses-alpha")
    finally:
        await app.stop(0)
        if second is not None:
            await second.server.stop(0)
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.WhichOneof("outcome") == "error"
    assert "alpha" in result.error
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    # The model is not offered a tool no executor has any more.
    assert [t.name for t in agent.tools] == []
    assert "tools" not in fake_model.requests[0]
