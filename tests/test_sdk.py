"""The typed Python SDK against the real runtime: typed events, run handles
that re-attach after cut streams (a stream deadline, a TCP connection torn
down under the stream), exceptions per status code with their details."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import FrozenInstanceError

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pilothouse.client import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PilothouseClient,
    PilothouseError,
    PilothouseRpcError,
    ResourceExhaustedError,
    UnauthenticatedError,
    error_from_rpc,
    is_stream_cut,
)
from pilothouse.client.events import (
    EVENT_TYPES,
    ApprovalRequired,
    Done,
    RunStarted,
    TextDelta,
    ToolResult,
    UnknownEvent,
    event_from_proto,
)
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import event_pb2
from tests.conftest import wait_until


def held(text: str, release: asyncio.Event) -> SSEReply:
    """A text reply that stops after its first delta until `release` is set."""
    events = text_reply(text, chunk_size=4).events
    return SSEReply([*events[:2], Pause(release), *events[2:]])


async def test_a_run_handle_yields_typed_events_and_its_result(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", '{"text": "two words"}')]), text_reply("Two words.")
    )
    run = await client.start_run(session_id, "How many words?", "erin")
    assert run.run_id and run.session_id == session_id

    events = [event async for event in run.events()]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.raw.WhichOneof("event") == e.kind for e in events)
    assert all(type(e) is EVENT_TYPES[e.kind] for e in events)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert (started.agent, started.sender, started.content) == (
        started.raw.run_started.agent, "erin", "How many words?")
    texts, results = [], []
    for event in events:
        match event:
            case TextDelta(text=text):
                texts.append(text)
            case ToolResult(name=name, output=output):
                results.append((name, output))
    assert "".join(texts) == "Two words."
    assert results[0][0] == "text_stats" and json.loads(results[0][1])["words"] == 2
    done = await run.result()
    assert isinstance(done, Done) and done is run.done
    assert done.final_response == "Two words."
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.iterations == 2 and done.usage.total_tokens == done.raw.done.usage.total_tokens
    assert done.time.tzinfo is not None
    with pytest.raises(FrozenInstanceError):
        done.sequence = 0  # type: ignore[misc]
    # A second iteration after the end has nothing more; events(after=) replays.
    assert [e async for e in run.events()] == []
    replayed = [e.sequence async for e in run.events(after=len(events) - 2)]
    assert replayed == [len(events) - 1, len(events)]


async def test_a_stream_deadline_is_reattached_without_gaps_or_duplicates(client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held("Held, then finished.", release))
    run = await client.start_run(session_id, "Go", stream_timeout=0.5)
    collected = asyncio.create_task(_collect(run))
    # Each stream call ends with DEADLINE_EXCEEDED while the model is held.
    await wait_until(lambda: run.reattach_count >= 2)
    release.set()
    events = await collected
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[-1], Done) and events[-1].final_response == "Held, then finished."


async def test_a_connection_torn_down_under_the_stream_is_reattached(app, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held("Across two connections.", release))
    async with TcpProxy(app.port) as proxy, PilothouseClient(proxy.target) as client:
        run = await client.start_run(session_id, "Go")
        seen: list = []

        async def follow() -> None:
            async for event in run.events():
                seen.append(event)

        follower = asyncio.create_task(follow())
        await wait_until(lambda: any(isinstance(e, TextDelta) for e in seen))
        proxy.cut()  # UNAVAILABLE on the stream
        await wait_until(lambda: run.reattach_count >= 1)
        release.set()
        await follower
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == "Across two connections."
    assert proxy.connections >= 2


async def test_a_run_handle_decides_steers_and_cancels(client, fake_model, session_of):
    session_id = await session_of(tools=("delete_records",))
    release = asyncio.Event()
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", '{"table": "logs"}')]),
        held("Deleted; anything else?", release),
    )
    run = await client.start_run(session_id, "Clear the logs")
    events = run.events()
    before = []
    async for event in events:
        before.append(event)
        if isinstance(event, ApprovalRequired):
            assert event.tool_call.id == "d1" and event.tool_call.name == "delete_records"
            assert event.request_id.startswith("req_")
            await run.decide(event.request_id, "approve")
        if isinstance(event, TextDelta):
            break
    assert [e.output for e in before if isinstance(e, ToolResult)] == ["deleted all records of logs"]
    await run.steer("and the caches")
    reply = await run.cancel("enough")
    assert reply.run_id == run.run_id
    release.set()
    rest = [e async for e in events]
    done = rest[-1]
    assert isinstance(done, Done) and done.stop_reason == event_pb2.STOP_REASON_CANCELLED
    steered = [e.content for e in rest if e.kind == "user_steered"]
    assert steered + [s.content for s in done.unapplied_steering] == ["and the caches"]
    with pytest.raises(FailedPreconditionError) as finished:
        await run.steer("too late")
    assert finished.value.reason
    with pytest.raises(NotFoundError):
        await run.decide("no-such-request", "deny", reason="no")


async def test_errors_are_one_class_per_status_code_with_their_details(client, session_of):
    with pytest.raises(NotFoundError) as missing:
        await client.get_agent("no-such-agent")
    error = missing.value
    assert isinstance(error, PilothouseError) and isinstance(error, PilothouseRpcError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert (error.reason, error.domain, error.metadata) == (
        "AGENT_NOT_FOUND", "pilothouse.v1", {"agent": "no-such-agent"})
    with pytest.raises(InvalidArgumentError) as bad:
        await client.create_agent("9lives")
    assert [v.field for v in bad.value.field_violations] == ["config.name"]
    assert bad.value.field_violations[0].description
    session_id = await session_of()
    with pytest.raises(InvalidArgumentError):
        await client.start_run(session_id, "")
    with pytest.raises(NotFoundError):
        await client.start_run("no-such-session", "hello")


async def test_retry_info_and_unauthenticated_from_a_real_server():
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example", metadata={"limit": "5"})
    async with StatusServer(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", info, retry) as server:
        async with PilothouseClient(server.target) as client:
            with pytest.raises(ResourceExhaustedError) as exhausted:
                await client.list_agents()
    assert exhausted.value.retry_delay == 2.5
    assert (exhausted.value.reason, exhausted.value.metadata) == ("QUOTA", {"limit": "5"})
    async with StatusServer(grpc.StatusCode.UNAUTHENTICATED, "token expired") as server:
        async with PilothouseClient(server.target) as client:
            with pytest.raises(UnauthenticatedError) as unauthenticated:
                await client.get_session("s")
    assert unauthenticated.value.message == "token expired"


def test_which_failed_streams_are_cuts():
    def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    assert is_stream_cut(error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert is_stream_cut(error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert is_stream_cut(error(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"))
    assert not is_stream_cut(error(grpc.StatusCode.INTERNAL, "internal error; see the server log"))
    assert not is_stream_cut(error(grpc.StatusCode.NOT_FOUND, "no such run"))
    assert type(error_from_rpc(error(grpc.StatusCode.NOT_FOUND, "x"))) is NotFoundError


def test_an_event_this_sdk_does_not_know_stays_readable():
    unknown = event_from_proto(event_pb2.AgentEvent(session_id="s", run_id="r", sequence=7))
    assert isinstance(unknown, UnknownEvent) and unknown.sequence == 7 and unknown.kind == ""
    # Every member of the proto's oneof has its class.
    members = {f.name for f in event_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields}
    assert set(EVENT_TYPES) == members


async def _collect(run) -> list:
    return [event async for event in run.events()]


class TcpProxy:
    """A real TCP proxy to 127.0.0.1:`port` whose `cut()` closes every
    connection it carries, as a proxy or a failing node would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def target(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class StatusServer:
    """A real gRPC server that answers every method with one status and
    its rich details (what a gateway, an auth proxy or a quota layer in
    front of the runtime answers)."""

    def __init__(self, code: grpc.StatusCode, message: str, *details) -> None:
        packed = []
        for detail in details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        self.status = rpc_status.to_status(status_pb2.Status(
            code=getattr(code_pb2, code.name), message=message, details=packed))
        self.target = ""

    async def __aenter__(self) -> StatusServer:
        status = self.status

        class Refuse(grpc.GenericRpcHandler):
            def service(self, handler_call_details):
                async def refuse(request, context):
                    await context.abort_with_status(status)

                return grpc.unary_unary_rpc_method_handler(refuse)

        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((Refuse(),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.target = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(0)
