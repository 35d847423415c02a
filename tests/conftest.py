"""Shared fixtures: real servers on real ports.

- `tool_server`: the reference ToolExecutor (built-ins plus test tools) on
  127.0.0.1, port picked by the OS.
- `fake_model`: an OpenAI-compatible HTTP server answering from a queue the
  test fills (`fake_model.responder.push(...)`).
- `anthropic_model`: the same for the Anthropic Messages API; `app` has it
  as the provider named `anthropic` (agents use `model =
  "anthropic/claude-fake-1"`), with the API key in `ANTHROPIC_KEY_ENV`.
- `app`: the Pilothouse runtime started by `start_app` on those.
- `client`: the Python SDK on a real gRPC channel to `app`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from pilothouse.app.settings import Settings
from pilothouse.app.startup import App, start_app
from pilothouse.client import PilothouseClient
from pilothouse.rpc.serving import RunningServer
from pilothouse.testmodel import ChatCompletionsServer, QueueResponder
from pilothouse.testmodel.anthropic import AnthropicMessagesServer
from pilothouse.toolexecutor import AskUser, ToolFlags, ToolRegistry, current_answer
from pilothouse.toolexecutor.builtins import register_builtins
from pilothouse.toolexecutor.service import serve_tools

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "fixtures" / "sse"

#: Gates the `wait_for_gate` test tool waits on, by name.
GATES: dict[str, asyncio.Event] = {}
#: Names of gates whose tool call saw cancellation.
CANCELLED_GATES: list[str] = []


class ObservedGate(asyncio.Event):
    """A gate (put in `GATES`) that says when a tool call starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def wait(self) -> bool:
        self.entered.set()
        return await super().wait()


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


def build_test_tools() -> ToolRegistry:
    """Built-ins plus tools that let tests control timing and failure."""
    registry = ToolRegistry()
    register_builtins(registry)

    @registry.tool
    async def wait_for_gate(name: str) -> str:
        """Wait until the test opens the gate `name`, then say so.

        Args:
            name: The gate to wait for.
        """
        try:
            await gate(name).wait()
        except asyncio.CancelledError:
            CANCELLED_GATES.append(name)
            raise
        return f"gate {name} opened"

    @registry.tool(flags=ToolFlags(idempotent=True, read_only=True))
    async def read_gate(name: str) -> str:
        """Wait until the gate `name` opens, then say so (safe to repeat).

        Args:
            name: The gate to wait for.
        """
        try:
            await gate(name).wait()
        except asyncio.CancelledError:
            CANCELLED_GATES.append(name)
            raise
        return f"gate {name} read"

    @registry.tool(flags=ToolFlags(allowed_roles=("admin",)))
    def admin_only() -> str:
        """Only runs for principals with the admin role."""
        return "done for an admin"

    @registry.tool(metadata={"requires_approval": "true"})
    def delete_records(table: str) -> str:
        """Pretend to delete every record of a table (needs approval).

        Args:
            table: The table to empty.
        """
        return f"deleted all records of {table}"

    @registry.tool
    def confirm(action: str) -> str:
        """Do `action` once the user confirms it.

        Args:
            action: What to do.
        """
        answer = current_answer()
        if answer is None:
            raise AskUser(f"Really {action}?", options=["yes", "no"])
        return f"{action}: done" if answer.selected_options == ("yes",) else f"{action}: skipped"

    @registry.tool
    def fail(message: str) -> str:
        """Always fails with `message`.

        Args:
            message: The error message.
        """
        raise RuntimeError(message)

    return registry


#: The environment variable holding the fake Anthropic provider's API key.
ANTHROPIC_KEY_ENV = "PILOTHOUSE_TEST_ANTHROPIC_KEY"
ANTHROPIC_KEY = "sk-ant-test-key"


@dataclass
class FakeModel:
    server: ChatCompletionsServer | AnthropicMessagesServer
    responder: QueueResponder
    base_url: str

    @property
    def requests(self) -> list[dict]:
        return self.server.requests


@dataclass
class ToolServer:
    server: RunningServer
    address: str


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def tool_server() -> AsyncIterator[ToolServer]:
    server = await serve_tools(build_test_tools(), "127.0.0.1:0")
    yield ToolServer(server, f"127.0.0.1:{server.port}")
    await server.server.stop(0)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def model_server() -> AsyncIterator[FakeModel]:
    responder = QueueResponder()
    server = ChatCompletionsServer(responder)
    base_url = await server.start()
    yield FakeModel(server, responder, base_url)
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def anthropic_server() -> AsyncIterator[FakeModel]:
    responder = QueueResponder()
    server = AnthropicMessagesServer(responder)
    base_url = await server.start()
    yield FakeModel(server, responder, base_url)
    await server.stop()


async def _fresh(model: FakeModel) -> AsyncIterator[FakeModel]:
    model.responder.queue.clear()
    model.server.requests.clear()
    model.server.request_headers.clear()
    yield model
    leftover = model.responder.remaining
    model.responder.queue.clear()
    assert leftover == 0, f"{leftover} queued model replies were never requested"


@pytest_asyncio.fixture(loop_scope="session")
async def fake_model(model_server: FakeModel) -> AsyncIterator[FakeModel]:
    """The session's fake model, with an empty queue and request log; a test
    that leaves replies unused fails."""
    async for model in _fresh(model_server):
        yield model


@pytest_asyncio.fixture(loop_scope="session")
async def anthropic_model(anthropic_server: FakeModel) -> AsyncIterator[FakeModel]:
    """The session's fake Anthropic model, as `fake_model`."""
    async for model in _fresh(anthropic_server):
        yield model


def anthropic_provider(server: FakeModel) -> dict:
    """The `[[providers]]` entry of the fake Anthropic server."""
    os.environ.setdefault(ANTHROPIC_KEY_ENV, ANTHROPIC_KEY)
    return {
        "name": "anthropic",
        "kind": "anthropic",
        "base_url": server.base_url,
        "api_key_env": ANTHROPIC_KEY_ENV,
        "max_retries": 2,
    }


def app_settings(model: FakeModel, tools: ToolServer, **overrides) -> Settings:
    values = {
        "listen_address": "127.0.0.1:0",
        "model_base_url": model.base_url,
        "model": "fake-model",
        "tool_executors": [tools.address],
        "tool_timeout": 30.0,
        "model_max_retries": 2,
        "shutdown_grace": 1.0,
        "generate_titles": False,
        "store_url": "memory://",
        "metrics_port": 0,
        **overrides,
    }
    return Settings(**values)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def app(
    model_server: FakeModel,
    anthropic_server: FakeModel,
    tool_server: ToolServer,
    tmp_path_factory,
) -> AsyncIterator[App]:
    """The runtime on the embedded default store: SQLite in a file."""
    data = tmp_path_factory.mktemp("data")
    app = await start_app(
        app_settings(
            model_server, tool_server, store_url="sqlite:///sessions.db", data_dir=data,
            providers=[anthropic_provider(anthropic_server)],
        )
    )
    yield app
    await app.stop(0)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def client(app: App) -> AsyncIterator[PilothouseClient]:
    async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
        yield client


_names = itertools.count(1)


@dataclass
class AgentFactory:
    client: PilothouseClient
    created: list[str] = field(default_factory=list)

    async def __call__(self, tools: tuple[str, ...] = (), **config) -> str:
        name = config.pop("name", f"agent-{next(_names)}")
        await self.client.create_agent(
            name, tools=tools, system_prompt=config.pop("system_prompt", "Be brief."), **config
        )
        self.created.append(name)
        return name


@pytest.fixture
def make_agent(client: PilothouseClient) -> AgentFactory:
    return AgentFactory(client)


@pytest_asyncio.fixture(loop_scope="session")
async def session_of(client: PilothouseClient, make_agent: AgentFactory):
    """`await session_of(tools=..., **config)` → a new session id on a new agent."""

    async def make(tools: tuple[str, ...] = (), **config) -> str:
        agent = await make_agent(tools, **config)
        return (await client.create_session(agent, "tester")).id

    return make


async def collect(stream) -> list:
    """Every event of a stream, in order."""
    return [event async for event in stream]


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def shape(events) -> list[str]:
    """Event kinds with runs of the same delta kind collapsed to one."""
    out: list[str] = []
    for kind in kinds(events):
        if not (out and out[-1] == kind and kind.endswith("_delta")):
            out.append(kind)
    return out


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.002) -> None:
    """Wait until `predicate()` (or the awaitable it returns) is true: state
    that has no event to await, such as a server-side queue or another
    process's store. Fails after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval)


def assert_valid_history(messages) -> None:
    """Every assistant tool call is followed by its tool result."""
    from pilothouse.v1 import message_pb2

    index = 0
    while index < len(messages):
        message = messages[index]
        if message.role == message_pb2.ROLE_ASSISTANT and message.tool_calls:
            wanted = [c.id for c in message.tool_calls]
            answered = []
            index += 1
            while index < len(messages) and messages[index].role == message_pb2.ROLE_TOOL:
                answered.append(messages[index].tool_call_id)
                index += 1
            assert answered == wanted, f"tool calls {wanted} answered by {answered}"
        else:
            index += 1
