"""The reference ToolExecutor, over a real grpc.aio channel."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import signal
import socket
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import pydantic
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import Field

from pilothouse.rpc.errors import error_details
from pilothouse.toolexecutor import ToolRegistry, default_registry
from pilothouse.toolexecutor.builtins import calculate, register_builtins
from pilothouse.toolexecutor.schema import parse_docstring
from pilothouse.toolexecutor.service import SERVICE_NAME, serve_tools
from pilothouse.v1 import tool_executor_service_pb2 as pb, tool_executor_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
BUILTIN_NAMES = ["current_time", "calculate", "json_query", "text_stats"]


# --- test tools ----------------------------------------------------------------


class Probe:
    """Events the test tools set, renewed for every test (`reset`, called
    in the running loop by the `stub` fixture)."""

    def reset(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.sync_started = asyncio.Event()
        self.sync_release = threading.Event()
        self.sync_thread: threading.Thread | None = None


probe = Probe()
test_tools = ToolRegistry()


@test_tools.tool
async def slow(label: str = "x") -> str:
    """Wait until the test releases it.

    Args:
        label: Echoed back in the output.
    """
    probe.started.set()
    try:
        await probe.release.wait()
        return f"released {label}"
    except asyncio.CancelledError:
        probe.cancelled.set()
        raise
    finally:
        probe.finished.set()


@test_tools.tool
def blocking() -> str:
    """Block a thread until the test releases it."""
    probe.sync_thread = threading.current_thread()
    probe.loop.call_soon_threadsafe(probe.sync_started.set)
    if not probe.sync_release.wait(timeout=30):
        raise TimeoutError("never released")
    return "unblocked"


@test_tools.tool(
    name="explode", description="Always fails.", metadata={"requires_approval": "true"}
)
def _explode(reason: str) -> str:
    raise RuntimeError(reason)


class Summary(pydantic.BaseModel):
    count: int
    tags: list[str]
    at: datetime


@test_tools.tool
def describe(
    count: Annotated[int, Field(ge=1, description="How many items.", examples=[3])],
    tags: list[str] | None = None,
    *,
    flag: bool = False,
) -> Summary:
    """Summarise items.

    A second paragraph that is not part of the description.

    Args:
        count: Ignored: the Annotated description wins.
        tags: Labels to attach,
            on two lines.
        flag: A switch.

    Returns:
        A summary.
    """
    return Summary(count=count, tags=tags or [], at=datetime(2024, 5, 1, 12, tzinfo=UTC))


# --- fixtures ------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def server():
    registry = ToolRegistry()
    register_builtins(registry)
    registry.include(test_tools)
    running = await serve_tools(registry, "127.0.0.1:0")
    yield running
    await running.server.stop(None)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest_asyncio.fixture(loop_scope="session")
async def stub(channel) -> pb_grpc.ToolExecutorServiceStub:
    probe.reset()
    return pb_grpc.ToolExecutorServiceStub(channel)


async def execute(stub, name: str, arguments: Any = None, **fields: str) -> pb.ExecuteToolResponse:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return await stub.ExecuteTool(
        pb.ExecuteToolRequest(name=name, arguments_json=text, **fields), timeout=10
    )


async def output_of(stub, name: str, arguments: Any = None) -> str:
    response = await execute(stub, name, arguments)
    assert response.WhichOneof("outcome") == "output", response.error
    return response.output


async def error_of(stub, name: str, arguments: Any = None) -> str:
    response = await execute(stub, name, arguments)
    assert response.WhichOneof("outcome") == "error", response.output
    return response.error


# --- ListTools -----------------------------------------------------------------


async def list_tools(stub) -> dict[str, Any]:
    response = await stub.ListTools(pb.ListToolsRequest(), timeout=10)
    return {tool.name: tool for tool in response.tools}


async def test_list_tools_names_descriptions_and_compact_schemas(stub):
    tools = await list_tools(stub)
    assert list(tools) == [*BUILTIN_NAMES, "slow", "blocking", "explode", "describe"]
    for tool in tools.values():
        schema = json.loads(tool.parameters_json_schema)
        assert tool.parameters_json_schema == json.dumps(
            schema, separators=(",", ":"), ensure_ascii=False
        )
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert "title" not in schema
    assert tools["text_stats"].description == "Count the characters, words and lines of a text."
    assert tools["explode"].description == "Always fails."
    assert dict(tools["explode"].metadata) == {"requires_approval": "true"}
    assert dict(tools["calculate"].metadata) == {}


async def test_list_tools_schema_from_hints_and_docstring(stub):
    schema = json.loads((await list_tools(stub))["describe"].parameters_json_schema)
    assert schema["required"] == ["count"]
    props = schema["properties"]
    assert props["count"] == {
        "type": "integer",
        "minimum": 1,
        "description": "How many items.",
        "examples": [3],
    }
    assert props["tags"]["anyOf"] == [
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
    assert props["tags"]["description"] == "Labels to attach, on two lines."
    assert props["tags"]["default"] is None
    assert props["flag"] == {"type": "boolean", "default": False, "description": "A switch."}
    tools = await list_tools(stub)
    assert tools["describe"].description == "Summarise items."
    assert json.loads(tools["blocking"].parameters_json_schema)["properties"] == {}


async def test_builtin_schemas_have_meaningful_examples(stub):
    tools = await list_tools(stub)
    for name in BUILTIN_NAMES:
        schema = json.loads(tools[name].parameters_json_schema)
        assert tools[name].description
        assert schema["properties"], name
        for prop, spec in schema["properties"].items():
            assert spec["type"] == "string", (name, prop)
            assert spec["description"], (name, prop)
            assert spec["examples"], (name, prop)
        # What the scripted test model sends: examples[0] of every parameter.
        arguments = {prop: spec["examples"][0] for prop, spec in schema["properties"].items()}
        assert await output_of(stub, name, arguments)
    calc = json.loads(tools["calculate"].parameters_json_schema)
    assert calc["required"] == ["expression"]
    assert calc["properties"]["expression"]["examples"][0] == "17 * 23 + 4"
    clock = json.loads(tools["current_time"].parameters_json_schema)
    assert "required" not in clock
    assert clock["properties"]["timezone"]["default"] == "UTC"
    assert clock["properties"]["timezone"]["examples"][0] == "UTC"
    query = json.loads(tools["json_query"].parameters_json_schema)
    example = {p: s["examples"][0] for p, s in query["properties"].items()}
    assert json.loads(await output_of(stub, "json_query", example)) == "Ada"


# --- built-ins -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 * 23 + 4", 395),
        ("2 ** 10 / 4", 256.0),
        ("7 // 2 + 7 % 2", 4),
        ("-(3 - 5) ** 2", -4),
        ("+-+3", -3),
        ("sqrt(16) + abs(-2) + round(2.567, 2)", 8.57),
        ("min(3, 1, 2) * max(4, 9)", 9),
        ("round(pi, 4) + floor(e)", 5.1416),
        ("2 ** -1", 0.5),
        ("log(8, 2)", 3.0),
    ],
)
async def test_calculate(stub, expression, expected):
    output = await output_of(stub, "calculate", {"expression": expression})
    value = json.loads(output)
    assert value == pytest.approx(expected)
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("open('x')", "calling 'open' is not allowed"),
        ("math.pi", "attribute access (math.pi) is not allowed"),
        ("(1).__class__", "attribute access"),
        ("x + 1", "unknown name 'x'"),
        ("(lambda: 1)()", "is not allowed"),
        ("[1, 2][0]", "unsupported syntax"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1 if 1 else 2", "unsupported syntax"),
        ("1 < 2", "unsupported syntax"),
        ("1 << 2", "unsupported syntax"),
        ("sqrt(x=4)", "positional arguments only"),
        ("sqrt", "is a function"),
        ("sqrt(1, 2)", "takes 1 arguments, got 2"),
        ("2 ** 100000", "result too large"),
        ("10 ** 10 ** 10", "result too large"),
        ("9 ** 9 ** 9 ** 9", "result too large"),
        ("10.0 ** 400", "result too large"),
        ("1e308 * 10", "not a finite number"),
        ("(-8) ** 0.5", "not a real number"),
        ("2 +", "not a valid expression"),
        ("1 " + "+ 1 " * 600, "longer than 1000 characters"),
        ("-" * 500 + "1", "nested too deeply"),
    ],
)
async def test_calculate_refuses(stub, expression, complaint):
    error = await error_of(stub, "calculate", {"expression": expression})
    assert error.startswith("ValueError: "), error
    assert complaint in error


async def test_calculate_division_by_zero(stub):
    assert await error_of(stub, "calculate", {"expression": "1 / (2 - 2)"}) == (
        "ZeroDivisionError: division by zero"
    )


def test_calculate_never_uses_eval(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    # (ast.parse itself goes through compile(), with PyCF_ONLY_AST.)
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert calculate("sqrt(2) ** 2 + 17 * 23") == pytest.approx(393.0)
    with pytest.raises(ValueError, match="not allowed"):
        calculate("eval('1')")


async def test_current_time(stub):
    before = datetime.now(UTC).replace(microsecond=0)
    value = json.loads(await output_of(stub, "current_time", {"timezone": "Asia/Kolkata"}))
    after = datetime.now(UTC)
    moment = datetime.fromisoformat(value["datetime"])
    assert value["timezone"] == "Asia/Kolkata"
    assert value["utc_offset"] == "+05:30"
    assert moment.utcoffset() == timedelta(hours=5, minutes=30)
    assert before <= moment <= after
    assert value["weekday"] == moment.strftime("%A")
    default = json.loads(await output_of(stub, "current_time", ""))
    assert default["timezone"] == "UTC"
    assert default["utc_offset"] == "+00:00"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe", "/etc/hosts"])
async def test_current_time_unknown_zone(stub, zone):
    error = await error_of(stub, "current_time", {"timezone": zone})
    assert error.startswith(f"ValueError: unknown time zone {zone!r}")


DOCUMENT = json.dumps(
    {"users": [{"name": "Ada", "langs": ["en", "fr"], "born": 1815}], "odd.key": {"x": None}}
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("users[0].name", "Ada"),
        ("users[0].langs[-1]", "fr"),
        ("users[0].born", 1815),
        ("users.0.langs", ["en", "fr"]),
        ('$["odd.key"].x', None),
        ("", json.loads(DOCUMENT)),
    ],
)
async def test_json_query(stub, path, expected):
    output = await output_of(stub, "json_query", {"document": DOCUMENT, "path": path})
    assert json.loads(output) == expected


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        (
            DOCUMENT,
            "users[0].age",
            "LookupError: no key 'age' at $.users[0] (keys: name, langs, born)",
        ),
        (DOCUMENT, "users[3]", "LookupError: index 3 out of range at $.users (array of 1 items)"),
        (
            DOCUMENT,
            "users.name",
            "LookupError: $.users is an array: use an index like [0], not 'name'",
        ),
        (DOCUMENT, "users[0].name.first", "LookupError: cannot look up 'first' in $.users[0].name"),
        (DOCUMENT, "users..name", "ValueError: invalid path 'users..name' at character 6"),
        ("{nope", "a", "ValueError: document is not valid JSON"),
    ],
)
async def test_json_query_errors(stub, document, path, expected):
    error = await error_of(stub, "json_query", {"document": document, "path": path})
    assert error.startswith(expected), error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The quick brown fox jumps over the lazy dog.", (44, 9, 1)),
        ("one two\nthree\n\nfour\n", (20, 4, 4)),
        ("", (0, 0, 0)),
        ("héllo wörld", (11, 2, 1)),
    ],
)
async def test_text_stats(stub, text, expected):
    value = json.loads(await output_of(stub, "text_stats", {"text": text}))
    assert (value["characters"], value["words"], value["lines"]) == expected


# --- arguments, results and failures ---------------------------------------------


async def test_validation_errors_list_every_bad_field(stub):
    error = await error_of(stub, "describe", {"count": 0, "tags": ["a", 3], "colour": "red"})
    assert error.splitlines() == [
        "invalid arguments for tool 'describe' (3 problems):",
        "- count: Input should be greater than or equal to 1 (got 0)",
        "- tags[1]: Input should be a valid string (got 3)",
        '- colour: Extra inputs are not permitted (got "red")',
    ]
    error = await error_of(stub, "calculate", {})
    assert (
        error == "invalid arguments for tool 'calculate' (1 problem):\n- expression: Field required"
    )
    error = await error_of(stub, "calculate", {"expression": ["1 + 1"]})
    assert '- expression: Input should be a valid string (got ["1 + 1"])' in error


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", "invalid arguments for tool 'text_stats': not valid JSON (Expecting"),
        ('{"text": "a"', "invalid arguments for tool 'text_stats': not valid JSON ("),
        ("[1, 2]", "invalid arguments for tool 'text_stats': expected a JSON object, got an array"),
        ('"text"', "invalid arguments for tool 'text_stats': expected a JSON object, got a string"),
        ("null", "invalid arguments for tool 'text_stats': expected a JSON object, got null"),
    ],
)
async def test_invalid_json_arguments(stub, arguments, expected):
    assert (await error_of(stub, "text_stats", arguments)).startswith(expected)


async def test_tool_exception_is_an_error_result(stub):
    assert await error_of(stub, "explode", {"reason": "boiler pressure"}) == (
        "RuntimeError: boiler pressure"
    )


async def test_non_string_results_are_json_encoded(stub):
    value = json.loads(await output_of(stub, "describe", {"count": "2", "tags": ["x"]}))
    assert value == {"count": 2, "tags": ["x"], "at": "2024-05-01T12:00:00Z"}


async def test_sync_tool_runs_in_a_worker_thread(stub):
    call = asyncio.ensure_future(execute(stub, "blocking"))
    try:
        await asyncio.wait_for(probe.sync_started.wait(), 10)
        assert probe.sync_thread is not threading.current_thread()
        # The event loop is free while the tool blocks its thread.
        assert "blocking" in await list_tools(stub)
        assert not call.done()
    finally:
        probe.sync_release.set()
    assert (await call).output == "unblocked"


async def test_slow_tool_completes_when_released(stub):
    call = asyncio.ensure_future(execute(stub, "slow", {"label": "ok"}))
    await asyncio.wait_for(probe.started.wait(), 10)
    probe.release.set()
    assert (await call).output == "released ok"
    assert probe.finished.is_set()
    assert not probe.cancelled.is_set()


# --- status codes, deadlines, cancellation ------------------------------------------


async def test_unknown_tool_is_not_found_with_error_info(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execute(stub, "no_such_tool")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no_such_tool" in caught.value.details()
    info, bad = error_details(caught.value)
    assert info is not None
    assert info.reason == "TOOL_NOT_FOUND"
    assert info.domain == "pilothouse.v1"
    assert dict(info.metadata) == {"tool": "no_such_tool"}
    assert bad is None


async def test_empty_name_is_invalid_argument_with_field_violation(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execute(stub, "", {"expression": "1"})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info is not None and info.reason == "INVALID_NAME"
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("name", "must not be empty")
    ]


async def test_deadline_cancels_the_tool(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecuteTool(pb.ExecuteToolRequest(name="slow", arguments_json="{}"), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(probe.cancelled.wait(), 10)
    assert probe.started.is_set()
    assert probe.finished.is_set()


async def test_client_cancel_cancels_the_tool(stub):
    call = stub.ExecuteTool(pb.ExecuteToolRequest(name="slow", arguments_json="{}"), timeout=30)
    await asyncio.wait_for(probe.started.wait(), 10)
    assert call.cancel()
    await asyncio.wait_for(probe.cancelled.wait(), 10)
    assert probe.finished.is_set()
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_each_call_is_logged_without_arguments(stub, caplog):
    caplog.set_level(logging.INFO, logger="pilothouse.toolexecutor.service")
    await execute(
        stub, "text_stats", {"text": "top secret words"}, call_id="call-7", session_id="sess-3"
    )
    await error_of(stub, "explode", {"reason": "classified"})
    lines = [r.getMessage() for r in caplog.records if r.name == "pilothouse.toolexecutor.service"]
    assert any(
        "name=text_stats" in line
        and "call_id=call-7" in line
        and "session_id=sess-3" in line
        and "outcome=ok" in line
        and "duration_ms=" in line
        for line in lines
    ), lines
    assert any("name=explode" in line and "outcome=error" in line for line in lines), lines
    assert not any("secret" in line or "classified" in line for line in lines)


# --- health and reflection -----------------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
async def test_health_serving(channel, service):
    assert SERVICE_NAME == "pilothouse.v1.ToolExecutorService"
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel):
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = [s.name for r in [r async for r in call] for s in r.list_services_response.service]
    assert "pilothouse.v1.ToolExecutorService" in names
    assert "grpc.health.v1.Health" in names


# --- the registry itself ---------------------------------------------------------


def test_registry_rejects_bad_names_duplicates_and_varargs():
    registry = ToolRegistry()

    def fine() -> str:
        return "ok"

    registry.register(fine)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(fine)
    for bad in ["", "has space", "dot.ted", "x" * 65, "ünï"]:
        with pytest.raises(ValueError, match="invalid tool name"):
            registry.register(fine, name=bad)
    registry.register(fine, name="A-b_9" + "x" * 59)

    def varargs(*values: int) -> int:
        return 0

    with pytest.raises(TypeError, match=r"\*args"):
        registry.register(varargs)
    with pytest.raises(ValueError, match="fine"):
        registry.include(registry)
    assert registry.names == ["fine", "A-b_9" + "x" * 59]


def test_parse_docstring():
    description, params = parse_docstring(
        """Do a thing
        across two lines.

        More text.

        Args:
            a (int): First.
            b: Second,
                continued.
            *rest: Rest.

        Returns:
            c: Not a parameter.
        """
    )
    assert description == "Do a thing across two lines."
    assert params == {"a": "First.", "b": "Second, continued.", "rest": "Rest."}
    assert parse_docstring("") == ("", {})


def test_default_registry_holds_the_builtins():
    assert default_registry.names[: len(BUILTIN_NAMES)] == BUILTIN_NAMES


# --- the pilothouse-tools process ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_main_process_serves_and_exits_zero_on_sigterm():
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PILOTHOUSE_TOOLS_LISTEN_ADDRESS", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pilothouse.toolexecutor.main",
        "--listen",
        f"127.0.0.1:{port}",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = None
            async with asyncio.timeout(30):
                while status != health_pb2.HealthCheckResponse.SERVING:
                    response = await health.Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                        wait_for_ready=True,
                        timeout=30,
                    )
                    status = response.status
            tools = await pb_grpc.ToolExecutorServiceStub(ch).ListTools(
                pb.ListToolsRequest(), timeout=10
            )
            assert [t.name for t in tools.tools] == BUILTIN_NAMES
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line.decode().strip() == f"pilothouse-tools listening on 127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
