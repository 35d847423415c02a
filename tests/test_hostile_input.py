"""Hostile input over real channels, on both servers: undecodable bytes,
huge ids, forged page tokens, deeply nested JSON, and tool calls a model
gets wrong (duplicate ids, no name). Each answer is a clear status (or a
tool error result the model reads), never UNKNOWN or INTERNAL, and never
an error that echoes a huge value back."""

from __future__ import annotations

import json

import grpc
import pytest

from pilothouse.client import PilothouseRpcError
from pilothouse.rpc.errors import error_details
from pilothouse.runtime.paging import encode_token
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import (
    run_service_pb2,
    run_service_pb2_grpc,
    session_service_pb2,
    tool_executor_service_pb2 as tools_pb,
    tool_executor_service_pb2_grpc as tools_grpc,
)
from tests.conftest import assert_valid_history, collect

DEEP = 5000


async def _status(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await awaitable
    return error.value


def _trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    return sum(len(k) + len(v) for k, v in error.trailing_metadata() or ())


# --- undecodable bytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"\x0a\x03\xff\xfe\xfd", b"\x0a\x10abc", b"\x0f\x01"],
    ids=["bad UTF-8", "truncated", "bad wire type"],
)
async def test_undecodable_requests_are_invalid_argument_on_both_servers(app, tool_server, payload):
    targets = [
        (f"127.0.0.1:{app.port}", "/pilothouse.v1.SessionService/GetSession"),
        (tool_server.address, "/pilothouse.v1.ToolExecutorService/ExecuteTool"),
    ]
    for address, method in targets:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(method)(payload, timeout=5)
            error = await _status(call)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
        assert "Unexpected" not in error.details() and "DecodeError" not in error.details()
        info, _ = error_details(error)
        assert info is not None and info.reason == "MALFORMED_REQUEST"


async def test_an_undecodable_message_in_a_steer_stream_ends_it_clearly(app):
    async def requests():
        yield b"\x0a\x07\x0a\x05ok\xff\xfe\xfd"  # start.session_id with bad UTF-8

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            "/pilothouse.v1.RunService/Steer",
            response_deserializer=run_service_pb2.SteerResponse.FromString,
        )(requests(), timeout=10)
        error = await _status(collect(call))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, _ = error_details(error)
    assert info.reason == "MALFORMED_REQUEST"


async def test_undecodable_bytes_to_reflection_and_health_are_invalid_argument(app):
    """Services the project did not write get the same treatment."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        async def requests():
            yield b"\x0a\x03\xff\xfe\xfd"  # ServerReflectionRequest.host, bad UTF-8

        call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
            requests(), timeout=5
        )
        error = await _status(collect(call))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        error = await _status(
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x02\xff\xfe", timeout=5)
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


# --- huge ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10_000, 4 * 1024 * 1024])
async def test_a_huge_id_is_invalid_argument_and_not_echoed(client, size):
    huge = "x" * size
    error = await _status(
        client.sessions.GetSession(session_service_pb2.GetSessionRequest(session_id=huge), timeout=10)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _trailer_bytes(error) < 2048
    _, bad = error_details(error)
    assert bad is not None and bad.field_violations[0].field == "session_id"
    runs = run_service_pb2_grpc.RunServiceStub(client.channel)
    error = await _status(
        runs.SendTo(run_service_pb2.SendToRequest(session_id="s", content="hi", sender=huge), timeout=10)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unknown_id_is_echoed_clipped(client):
    long_id = "é" * 120  # under the limit in characters, over it in bytes
    error = await _status(
        client.sessions.GetSession(session_service_pb2.GetSessionRequest(session_id=long_id), timeout=5)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # 240 bytes > 128
    unknown = "u" * 100
    with pytest.raises(PilothouseRpcError) as caught:
        await client.get_session(unknown)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.metadata["session_id"] == unknown


async def test_a_huge_tool_name_is_invalid_argument_on_the_executor(tool_server):
    async with grpc.aio.insecure_channel(tool_server.address) as channel:
        stub = tools_grpc.ToolExecutorServiceStub(channel)
        error = await _status(
            stub.ExecuteTool(tools_pb.ExecuteToolRequest(name="t" * 10_000), timeout=5)
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _trailer_bytes(error) < 2048
        error = await _status(stub.ExecuteTool(tools_pb.ExecuteToolRequest(name="t" * 100), timeout=5))
        assert error.code() is grpc.StatusCode.NOT_FOUND


# --- page tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "position", ["x", -1, 10**30, 1.5, None, True, [1], "9" * 10_000],
    ids=["string", "negative", "huge", "float", "null", "bool", "list", "10 KB"],
)
async def test_a_forged_page_token_is_invalid_page_token(client, session_of, position):
    session_id = await session_of()
    token = encode_token("messages", position, {"session_id": session_id, "newest_first": False})
    request = session_service_pb2.ListMessagesRequest(session_id=session_id, page_token=token)
    error = await _status(client.sessions.ListMessages(request, timeout=5))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(error)
    assert info.reason == "INVALID_PAGE_TOKEN"
    assert bad.field_violations[0].field == "page_token"


# --- deeply nested JSON ----------------------------------------------------------------------


async def test_deeply_nested_tool_arguments_are_a_tool_error(tool_server):
    async with grpc.aio.insecure_channel(tool_server.address) as channel:
        stub = tools_grpc.ToolExecutorServiceStub(channel)
        for arguments in ["[" * DEEP + "]" * DEEP, '{"expression":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}"]:
            reply = await stub.ExecuteTool(
                tools_pb.ExecuteToolRequest(call_id="c1", name="calculate", arguments_json=arguments),
                timeout=10,
            )
            assert reply.WhichOneof("outcome") == "error"
            assert "nested deeper than" in reply.error


async def test_deeply_nested_import_is_invalid_argument(client):
    meta = b'{"type":"meta","agent":"assistant","created_by":"x"}\n'
    line = b'{"type":"message","role":"user","content":"x","extra":' + b"[" * DEEP + b"]" * DEEP + b"}\n"
    with pytest.raises(PilothouseRpcError) as caught:
        await client.import_session(meta + line)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][1].startswith("line 2: JSON nested deeper than")


async def test_deeply_nested_arguments_from_the_model_are_an_error_result(client, fake_model, session_of):
    session_id = await session_of(tools=("ask_user", "calculate"))
    deep = '{"question":' + "[" * DEEP + "]" * DEEP + "}"
    fake_model.responder.push(
        tool_calls_reply([("q1", "ask_user", deep), ("c1", "calculate", "[" * DEEP + "]" * DEEP)]),
        text_reply("Sorry."),
    )
    events = await collect(client.stream_to(session_id, "ask me"))
    results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
    assert "invalid arguments for ask_user" in results["q1"].error
    assert "nested deeper than" in results["c1"].error
    assert events[-1].done.stop_reason == 1  # TEXT_RESPONSE
    assert_valid_history(await client.list_messages(session_id))


# --- tool calls the model gets wrong ---------------------------------------------------------


async def test_duplicate_and_missing_tool_call_ids_are_made_unique(client, fake_model, session_of):
    session_id = await session_of(tools=("calculate",))
    args = json.dumps({"expression": "1+1"})
    fake_model.responder.push(
        tool_calls_reply([("dup", "calculate", args), ("dup", "calculate", args), ("", "calculate", args)]),
        text_reply("2, 2 and 2"),
    )
    events = await collect(client.stream_to(session_id, "thrice"))
    assert events[-1].done.stop_reason == 1
    messages = await client.list_messages(session_id)
    ids = [c.id for c in messages[1].tool_calls]
    assert len(ids) == 3 and len(set(ids)) == 3 and ids[0] == "dup"
    assert [m.tool_call_id for m in messages[2:5]] == ids
    # The model is sent the same unique ids next round.
    sent = fake_model.requests[-1]["messages"]
    assert [c["id"] for c in sent[-4]["tool_calls"]] == ids
    assert_valid_history(messages)


async def test_a_tool_call_without_a_name_gets_an_error_result(client, fake_model, session_of):
    session_id = await session_of(tools=("calculate",))
    fake_model.responder.push(tool_calls_reply([("c1", "", "{}")]), text_reply("Oops."))
    events = await collect(client.stream_to(session_id, "call nothing"))
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert "names no tool" in result.error
    assert events[-1].done.stop_reason == 1  # not NO_ACTION
    assert_valid_history(await client.list_messages(session_id))


async def test_a_deeply_nested_response_schema_is_invalid_argument(client):
    deep = '{"type": "object", "properties": {"x": ' + '{"items": ' * 3000 + "{}" + "}" * 3000 + "}}"
    with pytest.raises(PilothouseRpcError) as caught:
        await client.create_agent("deep-schema", response_json_schema=deep)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_guest_agent_that_is_no_agent_name_is_invalid_argument(client, session_of):
    from pilothouse.v1 import run_service_pb2

    session_id = await session_of()
    for name in ("x" * 10_000, "no spaces allowed"):
        with pytest.raises(PilothouseRpcError) as caught:
            await client.send_to(session_id, "hi", options=run_service_pb2.RunOptions(agent=name),
                                 timeout=10)
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "INVALID_AGENT"
        assert len(caught.value.message) < 2048
