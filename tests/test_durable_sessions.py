"""Durable sessions end to end: a crash (SIGKILL) in the middle of a run,
two runtime processes sharing sessions through PostgreSQL, a store that goes
down, and export/import over gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError, decision
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import event_pb2, message_pb2, run_service_pb2
from tests.conftest import app_settings, assert_valid_history, collect, wait_until
from tests.pg import pg_server  # noqa: F401 - fixture

AGENTS = '[[agents]]\nname = "keeper"\ntools = ["text_stats"]\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(address: str, process: subprocess.Popen, timeout: float = 30) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(timeout):
            while True:
                assert process.poll() is None, f"runtime exited with {process.returncode}"
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)


@asynccontextmanager
async def runtime_process(
    tmp_path: Path, fake_model, tool_server, store_url: str, address: str = "", **env: str
) -> AsyncIterator[tuple[subprocess.Popen, PilothouseClient]]:
    """`pilothouse-server` as its own process on `address` (default: a
    free port)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    address = address or f"127.0.0.1:{free_port()}"
    environment = {
        **os.environ,
        "PILOTHOUSE_LISTEN_ADDRESS": address,
        "PILOTHOUSE_MODEL_BASE_URL": fake_model.base_url,
        "PILOTHOUSE_MODEL": "fake-model",
        "PILOTHOUSE_TOOL_EXECUTORS": tool_server.address,
        "PILOTHOUSE_AGENTS_FILE": str(agents),
        "PILOTHOUSE_STORE_URL": store_url,
        "PILOTHOUSE_DATA_DIR": str(tmp_path),
        "PILOTHOUSE_GENERATE_TITLES": "false",
        "PILOTHOUSE_METRICS_PORT": "0",
        **env,
    }
    log = (tmp_path / "server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pilothouse.app.main"], env=environment,
        stdout=log, stderr=log,
    )
    try:
        await wait_serving(address, process)
        async with PilothouseClient(address) as client:
            yield process, client
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


async def first(stream, kind: str) -> list:
    seen = []
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("event") == kind:
            return seen
    raise AssertionError(f"no {kind} in the stream")


async def test_a_crash_mid_run_with_the_interrupt_policy_is_reported(tmp_path, fake_model, tool_server):
    """With PILOTHOUSE_RESUME_POLICY=interrupt, a run whose server died is
    ended as INTERRUPTED: its user message and completed rounds stay, the
    unfinished round leaves no trace. (The default, resume, is in
    test_durable_runs.py.)"""
    store_url = "sqlite:///crash.db"
    env = {"PILOTHOUSE_RUN_LEASE": "1", "PILOTHOUSE_RESUME_POLICY": "interrupt"}
    release = asyncio.Event()
    held = text_reply("This answer never completes.").events
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "one two"}))]),
        text_reply("Two words."),
        SSEReply([*held[:2], Pause(release), *held[2:]]),
    )
    async with runtime_process(tmp_path, fake_model, tool_server, store_url, **env) as (process, client):
        session = await client.create_session("keeper", "crash-test")
        first_run = await client.send_to(session.id, "Count my words", timeout=30)
        assert first_run.response.final_response == "Two words."
        stream = client.stream_to(session.id, "Now say something long")
        events = await first(stream, "text_delta")
        process.send_signal(signal.SIGKILL)  # the server dies mid-stream
        process.wait(timeout=10)
        with pytest.raises(PilothouseRpcError):
            async for _ in stream:
                pass
    release.set()

    fake_model.responder.push(text_reply("Back again."))
    async with runtime_process(tmp_path, fake_model, tool_server, store_url, **env) as (_, client):
        async def reported() -> bool:
            got = await client.get_session(session.id)
            return got.last_run_stop_reason == event_pb2.STOP_REASON_INTERRUPTED

        await wait_until(reported, timeout=20, interval=0.1)
        got = await client.get_session(session.id)
        assert got.last_run_id == events[0].run_id
        assert got.active_run_id == ""
        history = await client.list_messages(session.id)
        # The user message was stored when the run started.
        assert [m.content for m in history if m.role != message_pb2.ROLE_TOOL] == [
            "Count my words", "", "Two words.", "Now say something long",
        ]
        assert_valid_history(history)
        run = await client.get_run(events[0].run_id)
        assert run.status == run_service_pb2.RUN_STATUS_FINISHED
        assert run.stop_reason == event_pb2.STOP_REASON_INTERRUPTED
        # The session takes new messages.
        reply = await client.send_to(session.id, "Are you there?", timeout=30)
        assert reply.response.final_response == "Back again."
        assert [m.content for m in await client.list_messages(session.id)][-2:] == [
            "Are you there?", "Back again.",
        ]


async def test_two_replicas_share_sessions_through_postgresql(tmp_path, fake_model, tool_server, pg_server):  # noqa: F811
    dsn = await pg_server.new_database()
    async with (
        runtime_process(tmp_path / "a", fake_model, tool_server, dsn) as (_, one),
        runtime_process(tmp_path / "b", fake_model, tool_server, dsn) as (_, two),
    ):
        session = await one.create_session("keeper", "replicated")
        assert (await two.get_session(session.id)).agent == "keeper"
        fake_model.responder.push(text_reply("Hello from replica two."))
        reply = await two.send_to(session.id, "Hi", timeout=30)
        assert reply.response.final_response == "Hello from replica two."
        assert [m.content for m in await one.list_messages(session.id)] == ["Hi", "Hello from replica two."]

        release = asyncio.Event()
        held = text_reply("Long answer on replica one.").events
        fake_model.responder.push(SSEReply([*held[:2], Pause(release), *held[2:]]))
        stream = one.stream_to(session.id, "Tell me a story")
        events = await first(stream, "text_delta")
        with pytest.raises(PilothouseRpcError) as error:
            await two.send_to(session.id, "Me too", timeout=30)
        assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.metadata == {
            "session_id": session.id, "active_run_id": events[0].run_id, "lease_expired": "false"
        }
        release.set()
        events += [e async for e in stream]
        assert events[-1].done.final_response == "Long answer on replica one."
        assert (await two.get_or_create_session("keeper", "replicated")).id == session.id


def pg_ctl(pg, *args: str) -> None:
    """Stop or start the cluster in place (keeping its data)."""
    options = f"-p {pg.port} -k {pg.root} -c listen_addresses=127.0.0.1"
    extra = ["-o", options, "-l", str(pg.root / "server.log")] if "start" in args else []
    pg._run(str(pg.bin_dir / "pg_ctl"), "-D", str(pg.data), *extra, *args)


async def test_a_store_that_is_down_refuses_runs_and_loses_nothing(fake_model, tool_server, tmp_path):
    from tests.pg import start_pg_server

    pg = start_pg_server()
    if pg is None:
        pytest.skip("PostgreSQL binaries missing")
    try:
        dsn = await pg.new_database()
        app = await start_app(app_settings(fake_model, tool_server, store_url=dsn))
        try:
            async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
                await client.create_agent("fragile")
                session = await client.create_session("fragile")
                fake_model.responder.push(text_reply("Stored."))
                await client.send_to(session.id, "First", timeout=30)
                pg_ctl(pg, "-m", "fast", "-w", "stop")
                with pytest.raises(PilothouseRpcError) as error:
                    await client.send_to(session.id, "While the store is down", timeout=30)
                assert error.value.code is grpc.StatusCode.UNAVAILABLE
                assert fake_model.responder.remaining == 0 and len(fake_model.requests) == 1
                pg_ctl(pg, "-w", "start")
                async with asyncio.timeout(20):
                    while True:
                        try:
                            history = await client.list_messages(session.id)
                            break
                        except PilothouseRpcError as exc:
                            assert exc.code is grpc.StatusCode.UNAVAILABLE
                            await asyncio.sleep(0.1)
                assert [m.content for m in history] == ["First", "Stored."]
        finally:
            await app.stop(0)
    finally:
        pg.stop()


async def test_export_and_import_over_grpc(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), compact_threshold=20)
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "some words " * 20}))]),
        text_reply("SUMMARY so far."),
        text_reply("Forty words."),
    )
    await client.send_to(session_id, "Count these words for me please", timeout=30)

    exported = await client.export_session(session_id)
    lines = [json.loads(line) for line in exported.decode().splitlines()]
    assert lines[0]["type"] == "meta"
    assert [line["type"] for line in lines[1:]].count("compact") == 1
    imported = await client.import_session(exported)

    assert imported.id != session_id
    original = await client.list_messages(session_id)
    copy = await client.list_messages(imported.id)
    assert [(m.role, m.content) for m in copy] == [(m.role, m.content) for m in original]
    assert (await client.export_session(imported.id)).splitlines()[1:] == exported.splitlines()[1:]

    before = len(await client.list_sessions())
    bad = exported.splitlines()
    bad[2] = b'{"type": "message", "role": "wizard", "content": "x"}'
    with pytest.raises(PilothouseRpcError) as error:
        await client.import_session(b"\n".join(bad))
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "line 3" in error.value.message
    assert len(await client.list_sessions()) == before


async def test_the_agent_registry_is_shared_and_versioned(fake_model, tool_server, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[[agents]]\nname = "keeper"\nsystem_prompt = "v1"\n')

    def settings():
        return app_settings(
            fake_model, tool_server, store_url="sqlite:///registry.db", data_dir=tmp_path,
            agents_file=agents,
        )

    one = await start_app(settings())
    two = await start_app(settings())
    try:
        async with PilothouseClient(f"127.0.0.1:{one.port}") as a, \
                PilothouseClient(f"127.0.0.1:{two.port}") as b:
            assert (await b.get_agent("keeper")).version == 1  # loaded twice, one version
            created = await a.create_agent("api-agent", tools=["text_stats"])
            seen = await b.get_agent("api-agent")
            assert (seen.version, seen.source, list(seen.config.tools)) == (1, "api", ["text_stats"])
            assert "api-agent" in [x.config.name for x in await b.list_agents()]
            assert created.config.name == "api-agent"

            session = await b.create_session("api-agent")
            fake_model.responder.push(text_reply("Served by replica two."))
            reply = await b.send_to(session.id, "hi", timeout=30)
            assert reply.response.final_response == "Served by replica two."

            await a.delete_agent("api-agent")
            for call in (b.get_agent("api-agent"), b.send_to(session.id, "again", timeout=30)):
                with pytest.raises(PilothouseRpcError) as error:
                    await call
                assert error.value.code is grpc.StatusCode.NOT_FOUND
                assert error.value.reason == "AGENT_NOT_FOUND"

            # A new config in the agents file is a new version for everyone.
            await two.stop(0)
            agents.write_text('[[agents]]\nname = "keeper"\nsystem_prompt = "v2"\n')
            three = await start_app(settings())
            await three.stop(0)
            keeper = await a.get_agent("keeper")
            assert (keeper.version, keeper.config.system_prompt) == (2, "v2")
    finally:
        await one.stop(0)
        await two.stop(0)


async def test_calls_about_a_run_are_forwarded_to_the_replica_that_runs_it(
    fake_model, tool_server, tmp_path
):
    """Attach, Steer (attach), SteerSession, SubmitDecision and Cancel reach
    the run through any replica."""
    apps = [
        await start_app(
            app_settings(fake_model, tool_server, store_url="sqlite:///fwd.db", data_dir=tmp_path)
        )
        for _ in range(2)
    ]
    one, two = apps
    try:
        assert one.runtime.address == f"127.0.0.1:{one.port}"
        async with PilothouseClient(f"127.0.0.1:{one.port}") as a, \
                PilothouseClient(f"127.0.0.1:{two.port}") as b:
            await a.create_agent("fwd", tools=["delete_records"])
            session = await a.create_session("fwd")
            release = asyncio.Event()
            held = text_reply("Finished on replica one.").events
            fake_model.responder.push(
                tool_calls_reply([("d1", "delete_records", json.dumps({"table": "t"}))]),
                SSEReply([*held[:2], Pause(release), *held[2:]]),
            )
            stream = a.stream_to(session.id, "Clean up")
            events = []
            async for event in stream:
                events.append(event)
                if event.HasField("approval_required"):
                    break
            run_id = events[0].run_id

            # Replica two has no such run: it forwards to replica one.
            watcher = asyncio.create_task(collect(b.attach(session.id, after_sequence=0)))
            assert await b.submit_decision(
                session.id, decision(events[-1].approval_required.request_id, event_pb2.VERDICT_APPROVE)
            ) == run_id
            async for event in stream:
                events.append(event)
                if event.HasField("text_delta"):
                    break
            assert await b.steer_session(session.id, "too late for this round") == run_id
            steer = await b.steer_attach(session.id, run_id, events[-1].sequence)
            cancelled = await b.cancel(session.id, reason="from replica two")
            assert (cancelled.run_id, cancelled.already_finished) == (run_id, False)
            assert cancelled.stop_reason == event_pb2.STOP_REASON_CANCELLED
            release.set()
            tail = [e async for e in steer]
            watched = await watcher
            events += [e async for e in stream]

            assert tail[-1].done.stop_reason == event_pb2.STOP_REASON_CANCELLED
            assert tail[0].sequence == events[len(events) - len(tail)].sequence
            assert [e.SerializeToString() for e in watched] == [e.SerializeToString() for e in events]
            assert [s.content for s in watched[-1].done.unapplied_steering] == ["too late for this round"]
            result = next(e.tool_result for e in watched if e.HasField("tool_result"))
            assert result.output == "deleted all records of t"

            # Finished: re-attaching by run id through either replica works.
            again = await collect(b.attach(session.id, run_id, watched[-1].sequence - 1))
            assert [e.WhichOneof("event") for e in again] == ["done"]
    finally:
        for app in apps:
            await app.stop(0)


async def test_double_texting_policies_apply_on_the_replica_that_runs_the_session(
    fake_model, tool_server, tmp_path
):
    apps = [
        await start_app(
            app_settings(fake_model, tool_server, store_url="sqlite:///dt.db", data_dir=tmp_path)
        )
        for _ in range(2)
    ]
    try:
        async with PilothouseClient(f"127.0.0.1:{apps[0].port}") as a, \
                PilothouseClient(f"127.0.0.1:{apps[1].port}") as b:
            await a.create_agent("dt")
            session = await a.create_session("dt")
            release = asyncio.Event()
            held = text_reply("First answer.").events
            fake_model.responder.push(
                SSEReply([*held[:2], Pause(release), *held[2:]]), text_reply("Queued answer.")
            )
            stream = a.stream_to(session.id, "first")
            events = await first(stream, "text_delta")

            with pytest.raises(PilothouseRpcError) as error:  # REJECT: not forwarded
                await b.send_to(session.id, "rejected", timeout=10)
            assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
            queued = asyncio.create_task(b.send_to(
                session.id, "second",
                options=run_service_pb2.RunOptions(if_active=run_service_pb2.ACTIVE_RUN_POLICY_ENQUEUE),
                timeout=30,
            ))
            await wait_until(lambda: bool(apps[0].runtime.queued_runs(session.id)))
            release.set()
            events += [e async for e in stream]
            reply = await queued

            assert events[-1].done.final_response == "First answer."
            assert reply.response.final_response == "Queued answer."
            assert [m.content for m in await b.list_messages(session.id)] == [
                "first", "First answer.", "second", "Queued answer.",
            ]
    finally:
        for app in apps:
            await app.stop(0)
