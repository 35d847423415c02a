"""MCP servers' tools through the reference ToolExecutor, against real MCP
servers written with the official SDK (tests/mcp_servers.py): one started
by the ToolExecutor over stdio, one over streamable HTTP on a free port.
Every call goes over a real gRPC channel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, decision
from pilothouse.rpc.serving import RunningServer
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.toolexecutor.builtins import register_builtins
from pilothouse.toolexecutor.mcp.config import (
    ConfigError,
    McpServerConfig,
    ToolsConfig,
    load_tools_config,
)
from pilothouse.toolexecutor.mcp.convert import exposed_name, tool_flags
from pilothouse.toolexecutor.mcp.hosts import McpHosts
from pilothouse.toolexecutor.registry import ToolRegistry
from pilothouse.toolexecutor.service import SERVICE_NAME, serve_tools
from pilothouse.toolexecutor.sources import ToolSources
from pilothouse.v1 import (
    event_pb2,
    tool_executor_service_pb2 as pb,
    tool_executor_service_pb2_grpc as pb_grpc,
)
from tests.conftest import ToolServer, app_settings, collect, wait_until

REPO = Path(__file__).resolve().parents[1]
MCP_SERVERS = str(REPO / "tests" / "mcp_servers.py")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# --- the MCP servers and the ToolExecutor ----------------------------------------


@dataclass
class HttpMcpServer:
    """tests/mcp_servers.py over streamable HTTP, in its own process."""

    process: asyncio.subprocess.Process | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, MCP_SERVERS, "http", "--port", str(self.port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line.startswith(b"PORT "), line
        self.port = int(line.split()[1])

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class Executor:
    running: RunningServer
    hosts: McpHosts
    stub: pb_grpc.ToolExecutorServiceStub
    health: health_pb2_grpc.HealthStub
    address: str

    async def call(self, name: str, arguments: dict | str | None = None, timeout: float = 10):
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        return await self.stub.ExecuteTool(
            pb.ExecuteToolRequest(call_id="c1", name=name, arguments_json=text), timeout=timeout
        )

    async def stats(self, server: str) -> dict:
        reply = await self.call(f"{server}__stats")
        assert reply.WhichOneof("outcome") == "output", reply
        return json.loads(reply.output)

    async def status(self, service: str) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status


def servers_config(http_url: str) -> ToolsConfig:
    fast = {"backoff_initial": 1.0, "backoff_max": 2.0, "connect_timeout": 20.0}
    return ToolsConfig(
        mcp_servers=[
            McpServerConfig(
                name="local", command=sys.executable, args=[MCP_SERVERS, "stdio"],
                env={"PILOTHOUSE_TEST_VALUE": "from the config"}, **fast,
            ),
            McpServerConfig(
                name="remote", url=http_url, headers={"X-Test-Header": "from the config"},
                ping_interval=0.2, required=True, **fast,
            ),
        ]
    )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http_mcp() -> AsyncIterator[HttpMcpServer]:
    server = HttpMcpServer()
    await server.start()
    yield server
    await server.kill()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def executor(http_mcp: HttpMcpServer) -> AsyncIterator[Executor]:
    registry = ToolRegistry()
    register_builtins(registry)
    hosts = McpHosts(servers_config(http_mcp.url))
    await hosts.start()
    running = await serve_tools(ToolSources(registry, hosts), "127.0.0.1:0")
    await hosts.report_health(running, ["", SERVICE_NAME])
    address = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(address)
    yield Executor(
        running, hosts, pb_grpc.ToolExecutorServiceStub(channel),
        health_pb2_grpc.HealthStub(channel), address,
    )
    await channel.close()
    await running.server.stop(0)
    await hosts.close()


async def up(executor: Executor, server: str) -> None:
    """Until the server's tools work (after a restart in an earlier test)."""
    await wait_until(lambda: executor.hosts.host(server).up, timeout=30)


# --- listing ---------------------------------------------------------------------


async def test_list_tools_namespaced_with_schema_description_and_flags(executor):
    reply = await executor.stub.ListTools(pb.ListToolsRequest(), timeout=5)
    tools = {tool.name: tool for tool in reply.tools}
    assert "calculate" in tools  # the registry's tools are served beside them
    for server in ("local", "remote"):
        echo = tools[f"{server}__echo"]
        assert echo.description == "Echo the text back."
        schema = json.loads(echo.parameters_json_schema)
        assert schema["type"] == "object"
        assert schema["required"] == ["text"]
        assert schema["properties"]["text"]["type"] == "string"
        assert dict(echo.metadata) == {"mcp_server": server, "mcp_tool": "echo"}
        assert (echo.read_only, echo.idempotent, echo.destructive, echo.requires_approval) == (
            True, True, False, False,
        )
    # A dot is not allowed in OpenAI function names: it becomes "_".
    assert tools["local__files_read"].metadata["mcp_tool"] == "files.read"
    delete = tools["local__delete_item"]
    assert (delete.read_only, delete.destructive, delete.requires_approval) == (False, True, True)
    set_value = tools["local__set_value"]
    assert (set_value.idempotent, set_value.destructive, set_value.requires_approval) == (
        True, False, False,
    )
    # No annotations: MCP's defaults say destructive, so approval is needed.
    bare = tools["local__unannotated"]
    assert (bare.read_only, bare.idempotent, bare.destructive, bare.requires_approval) == (
        False, False, True, True,
    )


def test_names_follow_the_openai_function_name_rule():
    assert exposed_name("files", "read_file") == "files__read_file"
    assert exposed_name("", "read_file") == "read_file"
    assert exposed_name("fs", "dir/list.all") == "fs__dir_list_all"
    long_a, long_b = exposed_name("p", "x" * 80), exposed_name("p", "x" * 79 + "y")
    assert len(long_a) == 64 and len(long_b) == 64 and long_a != long_b


def test_annotations_map_to_flags_with_the_configured_approval():
    from mcp_types import ToolAnnotations

    lenient = McpServerConfig(name="a", command="x", destructive_requires_approval=False)
    strict = McpServerConfig(name="b", command="x", requires_approval=True)
    destructive = ToolAnnotations(destructive_hint=True)
    assert tool_flags(destructive, lenient).requires_approval is False
    assert tool_flags(destructive, lenient).destructive is True
    assert tool_flags(ToolAnnotations(read_only_hint=True), strict).requires_approval is True
    # destructiveHint means nothing for a read-only tool.
    both = ToolAnnotations(read_only_hint=True, destructive_hint=True)
    assert tool_flags(both, lenient).destructive is False


async def test_tools_are_listed_again_when_the_server_says_they_changed(executor):
    await up(executor, "local")
    assert (await executor.call("local__grow")).output == "grown"

    async def listed():
        reply = await executor.stub.ListTools(pb.ListToolsRequest(), timeout=5)
        return "local__extra" in [tool.name for tool in reply.tools]

    await wait_until(listed)
    assert (await executor.call("local__extra")).output == "extra"


# --- calls -----------------------------------------------------------------------


@pytest.mark.parametrize("server", ["local", "remote"])
async def test_calls_return_text_and_structured_content(executor, server):
    await up(executor, server)
    assert (await executor.call(f"{server}__echo", {"text": "hi"})).output == "hi"
    assert (await executor.call(f"{server}__add", {"a": 2, "b": 3})).output == "5"
    weather = await executor.call(f"{server}__weather", {"city": "Oslo"})
    assert json.loads(weather.output) == {"city": "Oslo", "temperature_c": 21, "sky": "clear"}
    # Structured content without a text block becomes the output.
    assert (await executor.call(f"{server}__report")).output == '{"rows":3,"ok":true}'
    assert (await executor.call(f"{server}__files_read", {"path": "/a"})).output == "contents of /a"


async def test_stdio_env_and_http_headers_come_from_the_config(executor):
    await up(executor, "local")
    await up(executor, "remote")
    env = await executor.call("local__environment", {"name": "PILOTHOUSE_TEST_VALUE"})
    assert env.output == "from the config"
    # Only a safe default environment (PATH, HOME, ...) is inherited, not
    # the ToolExecutor's own variables (pytest sets PYTEST_VERSION).
    assert os.environ.get("PYTEST_VERSION")
    inherited = await executor.call("local__environment", {"name": "PYTEST_VERSION"})
    assert inherited.output == ""
    header = await executor.call("remote__request_header", {"name": "X-Test-Header"})
    assert header.output == "from the config"


async def test_binary_content_and_resources_are_described(executor):
    await up(executor, "local")
    output = (await executor.call("local__media")).output
    assert output.splitlines() == [
        "here is the chart",
        "[image: image/png, 70 bytes]",
        "[audio: audio/wav, 1000 bytes]",
        "[resource link: file:///reports/q3.pdf, name 'q3.pdf', application/pdf, 20480 bytes, The Q3 report]",
        "[resource: file:///notes.txt, text/plain]",
        "a note",
        "[resource: file:///data.bin, application/octet-stream, 10 bytes]",
    ]


@pytest.mark.parametrize("server", ["local", "remote"])
async def test_errors_become_error_results(executor, server):
    await up(executor, server)
    failed = await executor.call(f"{server}__fail", {"message": "the disk is full"})
    assert failed.WhichOneof("outcome") == "error"
    assert "the disk is full" in failed.error
    protocol = await executor.call(f"{server}__protocol_error")
    assert protocol.error == (
        f"MCP server {server!r} answered error -32602: the server refuses this request"
    )
    # The MCP server validates the arguments against its schema.
    invalid = await executor.call(f"{server}__add", {"a": "two"})
    assert invalid.WhichOneof("outcome") == "error"
    assert "validation error" in invalid.error
    not_json = await executor.call(f"{server}__add", "[1, 2]")
    assert not_json.error == (
        f"invalid arguments for tool '{server}__add': expected a JSON object, got an array"
    )


async def test_unknown_tool_is_not_found(executor):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await executor.call("local__nope")
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


# --- cancellation and deadlines -----------------------------------------------------


@pytest.mark.parametrize("server", ["local", "remote"])
async def test_cancelling_execute_tool_cancels_the_mcp_request(executor, server):
    await up(executor, server)
    before = await executor.stats(server)
    call = executor.stub.ExecuteTool(
        pb.ExecuteToolRequest(call_id="c1", name=f"{server}__wait", arguments_json="{}"), timeout=30
    )

    async def started():
        return (await executor.stats(server))["started"] > before["started"]

    await wait_until(started)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def cancelled():
        return (await executor.stats(server))["cancelled"] > before["cancelled"]

    await wait_until(cancelled)  # the MCP server saw notifications/cancelled


@pytest.mark.parametrize("server", ["local", "remote"])
async def test_the_deadline_becomes_the_mcp_timeout(executor, server):
    await up(executor, server)
    before = await executor.stats(server)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await executor.call(f"{server}__wait", timeout=1.0)
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    async def cancelled():
        return (await executor.stats(server))["cancelled"] > before["cancelled"]

    await wait_until(cancelled)


# --- a server that exits or goes away ------------------------------------------------


async def test_a_killed_stdio_server_is_restarted(executor):
    await up(executor, "local")
    assert await executor.status("mcp/local") == SERVING
    pid = (await executor.stats("local"))["pid"]
    os.kill(pid, signal.SIGKILL)

    await wait_until(lambda: _status_is(executor, "mcp/local", NOT_SERVING))
    # Down: its tools stay listed, a call says why it fails, the executor serves on.
    listed = await executor.stub.ListTools(pb.ListToolsRequest(), timeout=5)
    assert "local__echo" in [tool.name for tool in listed.tools]
    down = await executor.call("local__echo", {"text": "hi"})
    assert down.WhichOneof("outcome") == "error"
    assert down.error.startswith("MCP server 'local' is unavailable")
    assert "restarted" in down.error
    assert await executor.status("") == SERVING  # only `required` servers count
    assert (await executor.call("calculate", {"expression": "1+1"})).output == "2"

    await wait_until(lambda: _status_is(executor, "mcp/local", SERVING), timeout=30)
    assert (await executor.call("local__echo", {"text": "back"})).output == "back"
    assert (await executor.stats("local"))["pid"] != pid


async def test_a_server_exiting_mid_call_gives_an_error_and_restarts(executor):
    await up(executor, "local")
    pid = (await executor.stats("local"))["pid"]
    crashed = await executor.call("local__crash")
    assert crashed.WhichOneof("outcome") == "error"
    assert "closed the connection during the call" in crashed.error
    await up(executor, "local")
    assert (await executor.call("local__echo", {"text": "again"})).output == "again"
    assert (await executor.stats("local"))["pid"] != pid


async def test_an_unreachable_http_server_is_retried(executor, http_mcp):
    await up(executor, "remote")
    assert await executor.status("") == SERVING
    await http_mcp.kill()

    # Found by the ping; a required server takes the whole executor down.
    await wait_until(lambda: _status_is(executor, "mcp/remote", NOT_SERVING))
    assert await executor.status("") == NOT_SERVING
    assert await executor.status(SERVICE_NAME) == NOT_SERVING
    down = await executor.call("remote__echo", {"text": "hi"})
    assert down.error.startswith("MCP server 'remote' is unavailable")
    assert "reconnected" in down.error

    await http_mcp.start()  # the same port again
    await wait_until(lambda: _status_is(executor, "mcp/remote", SERVING), timeout=30)
    assert await executor.status("") == SERVING
    assert (await executor.call("remote__echo", {"text": "back"})).output == "back"


async def _status_is(executor: Executor, service: str, status: int) -> bool:
    return await executor.status(service) == status


# --- through the runtime ----------------------------------------------------------


async def test_an_agent_calls_mcp_tools_in_a_run(executor, fake_model):
    """A run over the real gRPC channel: the model calls an MCP tool, then
    a destructive one that waits for approval."""
    await up(executor, "local")
    app = await start_app(app_settings(fake_model, ToolServer(executor.running, executor.address)))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            agent = await client.create_agent(
                "mcp-agent", tools=["local__weather", "local__delete_item"]
            )
            session = await client.create_session(agent.config.name)
            fake_model.responder.push(
                tool_calls_reply([("w1", "local__weather", '{"city": "Oslo"}')]),
                text_reply("Clear in Oslo."),
                tool_calls_reply([("d1", "local__delete_item", '{"item_id": "42"}')]),
                text_reply("Deleted."),
            )
            events = await collect(client.stream_to(session.id, "Weather in Oslo?"))
            result = next(e.tool_result for e in events if e.HasField("tool_result"))
            assert json.loads(result.output)["city"] == "Oslo"
            assert events[-1].done.final_response == "Clear in Oslo."
            tool_message = fake_model.requests[1]["messages"][-1]
            assert tool_message["role"] == "tool" and "temperature_c" in tool_message["content"]

            stream = await client.steer(session.id, "Delete item 42")
            asked = []
            second = []
            async for event in stream:
                second.append(event)
                if event.HasField("approval_required"):
                    asked.append(event.approval_required)
                    await stream.decide(
                        decision(event.approval_required.request_id, event_pb2.VERDICT_APPROVE)
                    )
            assert [a.tool_call.name for a in asked] == ["local__delete_item"]
            deleted = next(e.tool_result for e in second if e.HasField("tool_result"))
            assert deleted.output == "deleted 42"
    finally:
        await app.stop(0)


# --- the config file and the pilothouse-tools process ----------------------------------


def test_config_file_with_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MCP_TOKEN", "s3cret")
    path = tmp_path / "tools.toml"
    path.write_text(
        """
destructive_requires_approval = false

[[mcp_servers]]
name = "files"
command = "npx"
args = ["-y", "server-filesystem", "/srv"]
env = { LEVEL = "warn" }

[[mcp_servers]]
name = "search"
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${TEST_MCP_TOKEN}" }
prefix = "web"
destructive_requires_approval = true
"""
    )
    config = load_tools_config(path)
    files, search = config.mcp_servers
    assert (files.transport, files.tool_prefix, files.args) == ("stdio", "files", ["-y", "server-filesystem", "/srv"])
    assert files.destructive_requires_approval is False  # from the top level
    assert (search.transport, search.tool_prefix) == ("http", "web")
    assert search.headers == {"Authorization": "Bearer s3cret"}
    assert search.destructive_requires_approval is True
    assert search.health_service == "mcp/search"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[mcp_servers]]\nname = "a"\n', "give either `command` (stdio) or `url`"),
        ('[[mcp_servers]]\nname = "a"\ncommand = "x"\nurl = "http://h/mcp"\n', "give either"),
        ('[[mcp_servers]]\nname = "a b"\ncommand = "x"\n', "mcp_servers[0].name"),
        ('[[mcp_servers]]\nname = "a"\ncommand = "x"\ncomand = "y"\n', "mcp_servers[0].comand"),
        ('[[mcp_servers]]\nname = "a"\ncommand = "x"\n[[mcp_servers]]\nname = "a"\ncommand = "y"\n',
         "two MCP servers are named 'a'"),
        ('[[mcp_servers]]\nname = "a"\nurl = "ftp://h"\n', "http:// or https://"),
        ('[[mcp_servers]]\nname = "a"\nurl = "http://h"\nheaders = { X = "${TEST_MCP_UNSET}" }\n',
         "environment variable TEST_MCP_UNSET is not set"),
        ("[[mcp_servers]\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("TEST_MCP_UNSET", raising=False)
    path = tmp_path / "tools.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_tools_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


async def test_pilothouse_tools_serves_the_configured_servers(tmp_path):
    """The shipped entry point with --config: MCP tools listed and callable,
    health per server, and SIGTERM stops the stdio server too."""
    config = tmp_path / "tools.toml"
    config.write_text(
        f"[[mcp_servers]]\nname = \"local\"\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(MCP_SERVERS)}, \"stdio\"]\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.toolexecutor.main", "--listen", "127.0.0.1:0",
        "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PILOTHOUSE_TOOLS_METRICS_PORT": "0"},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "listening on" in line, line
        address = line.split()[-1]
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service="mcp/local"), timeout=5)
            assert status.status == SERVING
            stub = pb_grpc.ToolExecutorServiceStub(channel)
            names = [t.name for t in (await stub.ListTools(pb.ListToolsRequest(), timeout=5)).tools]
            assert "current_time" in names and "local__echo" in names
            reply = await stub.ExecuteTool(
                pb.ExecuteToolRequest(name="local__stats", arguments_json="{}"), timeout=10
            )
            pid = json.loads(reply.output)["pid"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_pilothouse_tools_exits_2_for_a_bad_config(tmp_path):
    config = tmp_path / "tools.toml"
    config.write_text('[[mcp_servers]]\nname = "a"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.toolexecutor.main", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"give either `command` (stdio) or `url`" in stderr
