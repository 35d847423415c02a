"""Runs that outlive their process: checkpoints, resume after `kill -9` and
after a drain, takeover by another replica, idempotency keys, durable
decisions, run records (GetRun, ListRuns), and a store that fails.

Runtimes run as real processes (`pilothouse-server`) on a real SQLite file
or a real PostgreSQL server, against the fake model and the test
ToolExecutor of this test process.
"""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError, decision
from pilothouse.runtime.store.factory import open_store
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import (
    agent_pb2,
    event_pb2,
    message_pb2,
    run_service_pb2,
    session_service_pb2,
    tool_executor_service_pb2,
    tool_executor_service_pb2_grpc,
)
from tests.conftest import (
    CANCELLED_GATES,
    GATES,
    app_settings,
    assert_valid_history,
    collect,
    gate,
    kinds,
    wait_until,
)
from tests.pg import pg_server  # noqa: F401 - fixture
from tests.test_durable_sessions import first, free_port, runtime_process

FAST = {"PILOTHOUSE_RUN_LEASE": "2", "PILOTHOUSE_RESUME_POLL_INTERVAL": "0.2"}


def paused(reply: SSEReply, release: asyncio.Event, after: int) -> SSEReply:
    """`reply` stopped after its first `after` events until `release`."""
    return SSEReply([*reply.events[:after], Pause(release), *reply.events[after:]])


def assert_contiguous(events) -> None:
    sequences = [e.sequence for e in events if not e.HasField("heartbeat")]
    assert sequences == list(range(1, len(sequences) + 1)), sequences


async def stored_up_to(store_url: str, data_dir, run_id: str, sequence: int) -> None:
    """Wait until the run's events up to `sequence` are in the store (read
    from the store itself: GetRun tells the live sequence)."""
    store = await open_store(store_url, data_dir=data_dir)
    try:
        async def stored() -> bool:
            record = await store.get_run(run_id)
            return record is not None and record.last_sequence >= sequence

        await wait_until(stored, timeout=10, interval=0.02)
    finally:
        await store.close()


# --- kill -9 at each point of a run, then restart on the same file -------------

POINTS = ["user_message", "model_stream", "tool_call", "idempotent_tool_call", "decision",
          "between_rounds"]


@pytest.mark.parametrize("point", POINTS)
async def test_kill_at_each_point_then_restart_resumes_the_run(point, tmp_path, fake_model, tool_server):
    store_url = "sqlite:///runs.db"
    address = f"127.0.0.1:{free_port()}"
    release = asyncio.Event()
    name = f"kill-{point}-{id(tmp_path)}"
    answer = text_reply("Answered after the restart.")
    tools = {"tool_call": "wait_for_gate", "idempotent_tool_call": "read_gate"}
    trigger = {
        "user_message": "run_started", "model_stream": "text_delta", "tool_call": "tool_calls_start",
        "idempotent_tool_call": "tool_calls_start", "decision": "approval_required",
        "between_rounds": "tool_calls_complete",
    }[point]
    if point == "user_message":
        replies = [paused(text_reply("never"), release, 0)]
    elif point == "model_stream":
        replies = [paused(text_reply("This answer is cut short by a crash.", chunk_size=4), release, 2)]
    elif point in tools:
        replies = [tool_calls_reply([("c1", tools[point], json.dumps({"name": name}))])]
    elif point == "decision":
        replies = [tool_calls_reply([("c1", "text_stats", json.dumps({"text": "two words"}))])]
    else:
        replies = [
            tool_calls_reply([("c1", "text_stats", json.dumps({"text": "two words"}))]),
            paused(text_reply("never"), release, 0),
        ]
    fake_model.responder.push(*replies)
    try:
        async with runtime_process(tmp_path, fake_model, tool_server, store_url, address) as (process, client):
            agent_tools = [tools.get(point, "text_stats")]
            policy = agent_pb2.APPROVAL_POLICY_ALWAYS if point == "decision" else 0
            await client.create_agent("durable", tools=agent_tools, approval_policy=policy)
            session = await client.create_session("durable", "kill-test")
            stream = client.stream_to(session.id, "Please do the thing")
            seen = await first(stream, trigger)
            run_id = seen[0].run_id
            if point in tools:
                await wait_until(lambda: name in GATES)  # the call reached its executor
            if point in ("user_message", "between_rounds"):
                await wait_until(lambda: len(fake_model.requests) == len(replies))
            await stored_up_to(store_url, tmp_path, run_id, seen[-1].sequence)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        release.set()
    if point == "idempotent_tool_call":
        await wait_until(lambda: name in CANCELLED_GATES)
        gate(name).set()  # the second call returns at once
    fake_model.responder.push(answer)

    async with runtime_process(tmp_path, fake_model, tool_server, store_url, address) as (_, client):
        events = []
        async for event in client.attach(session.id, run_id, seen[-1].sequence):
            events.append(event)
            if event.HasField("approval_required"):
                assert event.approval_required.request_id == seen[-1].approval_required.request_id
                await client.submit_decision(
                    session.id, decision(event.approval_required.request_id, event_pb2.VERDICT_APPROVE)
                )
        assert events[0].sequence == seen[-1].sequence + 1  # no gap, no duplicate
        assert events[0].HasField("run_resumed")
        assert events[0].run_resumed.attempt == 1
        assert events[0].run_resumed.last_stored_sequence == seen[-1].sequence
        done = events[-1].done
        assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
        assert done.final_response == "Answered after the restart."

        everything = await collect(client.attach(session.id, run_id, 0))
        assert_contiguous(everything)
        assert kinds(everything).count("run_started") == 1
        assert kinds(everything).count("run_resumed") == 1
        assert [e.SerializeToString() for e in everything[-len(events):]] == [
            e.SerializeToString() for e in events
        ]

        history = await client.list_messages(session.id)
        assert_valid_history(history)
        assert history[0].content == "Please do the thing"
        assert history[-1].content == "Answered after the restart."
        results = [m for m in history if m.role == message_pb2.ROLE_TOOL]
        if point == "tool_call":
            # It ran (or may have): it is not silently run again.
            assert results[0].content.startswith("interrupted:")
            assert name not in [g for g in GATES if GATES[g].is_set()]
        elif point == "idempotent_tool_call":
            assert results[0].content == f"gate {name} read"
        elif point in ("decision", "between_rounds"):
            assert json.loads(results[0].content)["words"] == 2
        record = await client.get_run(run_id)
        assert record.status == run_service_pb2.RUN_STATUS_FINISHED
        assert record.attempt == 1 and record.owner == address
        assert record.last_sequence == everything[-1].sequence


# --- another replica takes over ------------------------------------------------


async def test_a_replica_takes_over_the_run_of_a_dead_one(tmp_path, fake_model, tool_server, pg_server):  # noqa: F811
    dsn = await pg_server.new_database()
    release = asyncio.Event()
    fake_model.responder.push(paused(text_reply("Cut short on replica one.", chunk_size=4), release, 2))
    try:
        async with (
            runtime_process(tmp_path / "a", fake_model, tool_server, dsn, **FAST) as (process_a, a),
            runtime_process(tmp_path / "b", fake_model, tool_server, dsn, **FAST) as (_, b),
        ):
            session = await a.create_session("keeper", "takeover")
            stream = a.stream_to(session.id, "Tell me a story")
            seen = await first(stream, "text_delta")
            run_id = seen[0].run_id
            await stored_up_to(dsn, tmp_path, run_id, seen[-1].sequence)
            process_a.send_signal(signal.SIGKILL)
            process_a.wait(timeout=10)
            release.set()
            fake_model.responder.push(text_reply("Finished on replica two."))

            loop = asyncio.get_running_loop()
            started = loop.time()
            events = await asyncio.wait_for(collect(b.attach(session.id, run_id, seen[-1].sequence)), 30)
            assert loop.time() - started < 2 + 10  # the lease plus a few seconds
            assert events[0].sequence == seen[-1].sequence + 1
            assert events[0].HasField("run_resumed")
            assert events[0].run_resumed.reason == "lease_expired"
            assert events[-1].done.final_response == "Finished on replica two."
            record = await b.get_run(run_id)
            assert record.owner != process_a.args and record.attempt == 1
            assert_valid_history(await b.list_messages(session.id))
            assert_contiguous(await collect(b.attach(session.id, run_id, 0)))
    finally:
        release.set()


async def test_a_pending_approval_survives_its_replica_and_is_decided_through_the_other(
    tmp_path, fake_model, tool_server, pg_server  # noqa: F811
):
    dsn = await pg_server.new_database()
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "one two three"}))])
    )
    async with (
        runtime_process(tmp_path / "a", fake_model, tool_server, dsn, **FAST) as (process_a, a),
        runtime_process(tmp_path / "b", fake_model, tool_server, dsn, **FAST) as (_, b),
    ):
        await a.create_agent("careful", tools=["text_stats"],
                             approval_policy=agent_pb2.APPROVAL_POLICY_ALWAYS)
        session = await a.create_session("careful", "approver")
        seen = await first(a.stream_to(session.id, "Count them"), "approval_required")
        asked = seen[-1].approval_required
        assert asked.request_id.startswith("req_") and asked.tool_call.id == "c1"
        run = await a.get_run(seen[0].run_id)
        assert run.status == run_service_pb2.RUN_STATUS_WAITING_FOR_DECISION
        await stored_up_to(dsn, tmp_path, seen[0].run_id, seen[-1].sequence)
        process_a.send_signal(signal.SIGKILL)
        process_a.wait(timeout=10)
        fake_model.responder.push(text_reply("Three words."))

        events = []
        async for event in b.attach(session.id, seen[0].run_id, seen[-1].sequence):
            events.append(event)
            if event.HasField("approval_required"):
                assert event.approval_required.request_id == asked.request_id  # asked again, same id
                await b.submit_decision(session.id, decision(asked.request_id, event_pb2.VERDICT_APPROVE))
        assert events[0].HasField("run_resumed")
        assert kinds(events).count("approval_required") == 1
        result = next(e.tool_result for e in events if e.HasField("tool_result"))
        assert json.loads(result.output)["words"] == 3
        assert events[-1].done.final_response == "Three words."


# --- a drain hands runs over -----------------------------------------------------


async def test_sigterm_hands_a_long_run_over_to_the_other_replica(tmp_path, fake_model, tool_server, pg_server):  # noqa: F811
    dsn = await pg_server.new_database()
    release = asyncio.Event()
    env = {**FAST, "PILOTHOUSE_SHUTDOWN_GRACE": "0.3"}
    fake_model.responder.push(paused(text_reply("Longer than the grace.", chunk_size=4), release, 2))
    try:
        async with (
            runtime_process(tmp_path / "a", fake_model, tool_server, dsn, **env) as (process_a, a),
            runtime_process(tmp_path / "b", fake_model, tool_server, dsn, **env) as (_, b),
        ):
            session = await a.create_session("keeper", "drain")
            stream = a.stream_to(session.id, "Take your time")
            seen = await first(stream, "text_delta")
            fake_model.responder.push(text_reply("Finished after the handover."))
            process_a.send_signal(signal.SIGTERM)
            with pytest.raises(PilothouseRpcError) as error:
                async for event in stream:
                    seen.append(event)
            assert error.value.code is grpc.StatusCode.UNAVAILABLE
            assert error.value.reason == "RUN_HANDED_OVER"
            assert process_a.wait(timeout=20) == 0
            release.set()

            events = await asyncio.wait_for(collect(b.attach(session.id, seen[0].run_id, seen[-1].sequence)), 30)
            assert events[0].sequence == seen[-1].sequence + 1
            assert events[0].run_resumed.reason == "handover"
            assert events[-1].done.final_response == "Finished after the handover."
            history = await b.list_messages(session.id)
            assert [m.content for m in history] == ["Take your time", "Finished after the handover."]
    finally:
        release.set()


async def test_sigterm_with_one_replica_resumes_the_run_on_the_next_start(tmp_path, fake_model, tool_server):
    address = f"127.0.0.1:{free_port()}"
    release = asyncio.Event()
    env = {"PILOTHOUSE_SHUTDOWN_GRACE": "0.2"}
    fake_model.responder.push(paused(text_reply("Too slow for the grace.", chunk_size=4), release, 2))
    try:
        async with runtime_process(tmp_path, fake_model, tool_server, "sqlite:///drain.db", address, **env) as (process, client):
            session = await client.create_session("keeper", "restart")
            stream = client.stream_to(session.id, "Go on")
            seen = await first(stream, "text_delta")
            process.send_signal(signal.SIGTERM)
            with pytest.raises(PilothouseRpcError) as error:
                async for event in stream:
                    seen.append(event)
            assert error.value.reason == "RUN_HANDED_OVER"
            assert process.wait(timeout=20) == 0
    finally:
        release.set()
    fake_model.responder.push(text_reply("Done on the next start."))
    async with runtime_process(tmp_path, fake_model, tool_server, "sqlite:///drain.db", address, **env) as (_, client):
        events = await collect(client.attach(session.id, seen[0].run_id, seen[-1].sequence))
        assert events[0].run_resumed.reason == "handover"
        assert events[-1].done.final_response == "Done on the next start."


# --- idempotency keys ------------------------------------------------------------


async def test_the_same_idempotency_key_makes_one_run(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("Only once."))
    one = await client.send_to(session_id, "Hello", idempotency_key="k-1", timeout=30)
    again = await client.send_to(session_id, "Hello", idempotency_key="k-1", timeout=30)
    assert again.run_id == one.run_id
    assert again.response.final_response == "Only once."
    streamed = await collect(client.stream_to(session_id, "Hello", idempotency_key="k-1"))
    assert streamed[0].run_id == one.run_id and streamed[-1].done.final_response == "Only once."

    # At the same time: one run.
    release = asyncio.Event()
    fake_model.responder.push(paused(text_reply("Concurrent."), release, 2))
    calls = [asyncio.create_task(client.send_to(session_id, "Twice", idempotency_key="k-2", timeout=30))
             for _ in range(3)]
    await wait_until(lambda: len(fake_model.requests) == 2)
    release.set()
    replies = await asyncio.gather(*calls)
    assert len({r.run_id for r in replies}) == 1
    assert [r.response.final_response for r in replies] == ["Concurrent."] * 3
    runs = await client.list_runs(session_id)
    assert [r.idempotency_key for r in runs] == ["k-2", "k-1"]
    assert [m.content for m in await client.list_messages(session_id)] == [
        "Hello", "Only once.", "Twice", "Concurrent."
    ]

    with pytest.raises(PilothouseRpcError) as error:
        await client.send_to(session_id, "Something else", idempotency_key="k-1", timeout=30)
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(PilothouseRpcError) as error:
        await client.send_to(session_id, "Hello", idempotency_key="k" * 200, timeout=30)
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_one_idempotency_key_across_replicas_is_one_run(tmp_path, fake_model, tool_server, pg_server):  # noqa: F811
    dsn = await pg_server.new_database()
    release = asyncio.Event()
    fake_model.responder.push(paused(text_reply("From one replica."), release, 2))
    async with (
        runtime_process(tmp_path / "a", fake_model, tool_server, dsn) as (_, a),
        runtime_process(tmp_path / "b", fake_model, tool_server, dsn) as (_, b),
    ):
        session = await a.create_session("keeper", "retry")
        calls = [asyncio.create_task(c.send_to(session.id, "Once", idempotency_key="retry-1", timeout=30))
                 for c in (a, b, a, b)]
        await wait_until(lambda: len(fake_model.requests) == 1)
        release.set()
        replies = await asyncio.gather(*calls)
        assert len({r.run_id for r in replies}) == 1
        assert {r.response.final_response for r in replies} == {"From one replica."}
        assert len(await b.list_runs(session.id)) == 1


# --- run records -------------------------------------------------------------------


async def test_get_run_list_runs_and_return_immediately(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b"}))]), text_reply("Two."),
    )
    started = await client.send_to(session_id, "Count", return_immediately=True, timeout=30)
    assert not started.HasField("response")
    assert started.run.status in (run_service_pb2.RUN_STATUS_RUNNING, run_service_pb2.RUN_STATUS_FINISHED)
    assert started.run.content == "Count" and started.run.agent_version == 1
    events = await collect(client.attach(session_id, started.run_id, 0))
    assert events[-1].done.final_response == "Two."

    run = await client.get_run(started.run_id)
    assert run.status == run_service_pb2.RUN_STATUS_FINISHED
    assert run.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert run.iterations == 2 and run.last_sequence == events[-1].sequence
    assert run.start_time.seconds and run.end_time.seconds
    assert run.usage.total_tokens == events[-1].done.usage.total_tokens

    fake_model.responder.push(text_reply("Again."), text_reply("Third."))
    await client.send_to(session_id, "Again", timeout=30)
    await client.send_to(session_id, "Third", timeout=30)
    runs = await client.list_runs(session_id, page_size=2)
    assert [r.content for r in runs] == ["Third", "Again", "Count"]
    finished = await client.list_runs(session_id, statuses=[run_service_pb2.RUN_STATUS_FINISHED])
    assert len(finished) == 3
    assert await client.list_runs(session_id, statuses=[run_service_pb2.RUN_STATUS_QUEUED]) == []

    with pytest.raises(PilothouseRpcError) as error:
        await client.get_run("no-such-run")
    assert error.value.code is grpc.StatusCode.NOT_FOUND and error.value.reason == "RUN_NOT_FOUND"
    with pytest.raises(PilothouseRpcError) as error:
        await client.list_runs(session_id, statuses=[99])
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await client.runs.ListRuns(run_service_pb2.ListRunsRequest(session_id=session_id, page_token="bad"))
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_attach_without_an_active_run_or_past_the_end(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("Over."))
    reply = await client.send_to(session_id, "Hi", timeout=30)
    with pytest.raises(PilothouseRpcError) as error:
        await collect(client.attach(session_id))  # no run_id, nothing active
    assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.reason == "NO_ACTIVE_RUN"
    last = (await client.get_run(reply.run_id)).last_sequence
    with pytest.raises(PilothouseRpcError) as error:
        await collect(client.attach(session_id, reply.run_id, last + 1))
    assert error.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert error.value.reason == "SEQUENCE_PAST_END"
    assert await collect(client.attach(session_id, reply.run_id, last)) == []


# --- decisions ---------------------------------------------------------------------


async def test_an_approval_may_edit_the_calls_arguments(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), approval_policy=agent_pb2.APPROVAL_POLICY_ALWAYS)
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "one"}))]), text_reply("Edited."),
    )
    stream = await client.steer(session_id, "Count")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("approval_required"):
            request_id = event.approval_required.request_id
            bad = decision(request_id, event_pb2.VERDICT_APPROVE)
            bad.edited_arguments_json = "[1, 2]"
            with pytest.raises(PilothouseRpcError) as error:
                await client.submit_decision(session_id, bad)
            assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
            edited = decision(request_id, event_pb2.VERDICT_APPROVE)
            edited.edited_arguments_json = json.dumps({"text": "one two three four"})
            await stream.decide(edited)
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert json.loads(result.output)["words"] == 4
    applied = next(e.decision_applied for e in events if e.HasField("decision_applied"))
    assert json.loads(applied.decision.edited_arguments_json) == {"text": "one two three four"}
    history = await client.list_messages(session_id)
    call = history[1].tool_calls[0]
    assert json.loads(call.arguments_json) == {"text": "one two three four"}  # what ran


async def test_tool_flags_reach_the_runtime(tool_server):
    async with grpc.aio.insecure_channel(tool_server.address) as channel:
        stub = tool_executor_service_pb2_grpc.ToolExecutorServiceStub(channel)
        reply = await stub.ListTools(tool_executor_service_pb2.ListToolsRequest(), timeout=10)
    tools = {t.name: t for t in reply.tools}
    assert tools["read_gate"].idempotent and tools["read_gate"].read_only
    assert not tools["wait_for_gate"].idempotent
    assert tools["delete_records"].requires_approval is False  # declared by metadata only
    assert tools["delete_records"].metadata["requires_approval"] == "true"


# --- a store that fails during a run ----------------------------------------------


async def test_a_store_failure_during_a_run_ends_it_with_done_and_releases_the_session(
    fake_model, tool_server, tmp_path
):
    from tests.pg import start_pg_server
    from tests.test_durable_sessions import pg_ctl

    pg = start_pg_server()
    if pg is None:
        pytest.skip("PostgreSQL binaries missing")
    release = asyncio.Event()
    try:
        dsn = await pg.new_database()
        app = await start_app(app_settings(fake_model, tool_server, store_url=dsn))
        try:
            async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
                await client.create_agent("fragile")
                session = await client.create_session("fragile")
                fake_model.responder.push(paused(text_reply("Never stored."), release, 2))
                stream = client.stream_to(session.id, "Hold on")
                seen = await first(stream, "text_delta")
                pg_ctl(pg, "-m", "fast", "-w", "stop")
                release.set()
                events = seen + await asyncio.wait_for(collect(stream), 30)
                done = events[-1].done
                assert done.stop_reason == event_pb2.STOP_REASON_ERROR
                assert "store" in done.error
                pg_ctl(pg, "-w", "start")

                async def released() -> bool:
                    try:
                        return (await client.get_session(session.id)).active_run_id == ""
                    except PilothouseRpcError:
                        return False

                await wait_until(released, timeout=30, interval=0.2)
                run = await client.get_run(events[0].run_id)
                assert run.stop_reason == event_pb2.STOP_REASON_ERROR
                assert [m.content for m in await client.list_messages(session.id)] == ["Hold on"]
                fake_model.responder.push(text_reply("Back."))
                reply = await client.send_to(session.id, "Again", timeout=30)
                assert reply.response.final_response == "Back."
        finally:
            await app.stop(0)
    finally:
        release.set()
        pg.stop()


# --- a model stream that fails after it began ------------------------------------


async def test_a_cut_model_stream_is_retried_and_answers_once(client, fake_model, session_of):
    from pilothouse.testmodel import cut_reply

    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b c"}))]),
        cut_reply("Three wo"), cut_reply("Three"), text_reply("Three words."),
    )
    events = await collect(client.stream_to(session_id, "Count"))
    retried = [e.round_retried for e in events if e.HasField("round_retried")]
    assert [r.attempt for r in retried] == [1, 2]
    assert all(r.model == "fake-model" for r in retried)
    assert events[-1].done.final_response == "Three words."
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    history = await client.list_messages(session_id)
    assert_valid_history(history)
    assert [m.content for m in history if m.role == message_pb2.ROLE_ASSISTANT] == ["", "Three words."]


async def test_an_idle_model_stream_is_retried(fake_model, tool_server):
    release = asyncio.Event()
    app = await start_app(app_settings(fake_model, tool_server, model_idle_timeout=0.3))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("idle")
            session = await client.create_session("idle")
            fake_model.responder.push(paused(text_reply("Stalled mid-answer."), release, 3),
                                      text_reply("Answered."))
            events = await collect(client.stream_to(session.id, "Hi"))
            retried = [e.round_retried for e in events if e.HasField("round_retried")]
            assert [r.cause for r in retried] == ["idle_timeout"]
            assert events[-1].done.final_response == "Answered."
    finally:
        release.set()
        await app.stop(0)


async def test_the_fallback_model_takes_over_when_retries_run_out(client, fake_model, session_of):
    from pilothouse.testmodel import cut_reply

    session_id = await session_of(fallback_model="fallback-model")
    fake_model.responder.push(cut_reply("a"), cut_reply("b"), cut_reply("c"), text_reply("From the fallback."))
    events = await collect(client.stream_to(session_id, "Hi"))
    retried = [e.round_retried for e in events if e.HasField("round_retried")]
    assert [(r.attempt, r.model) for r in retried] == [
        (1, "fake-model"), (2, "fake-model"), (3, "fallback-model")
    ]
    assert [r["model"] for r in fake_model.requests] == ["fake-model"] * 3 + ["fallback-model"]
    assert events[-1].done.final_response == "From the fallback."
    assert [m.content for m in await client.list_messages(session_id)] == ["Hi", "From the fallback."]


# --- answers too big for one message -------------------------------------------


async def test_a_huge_answer_is_capped_and_everything_stays_readable(fake_model, tool_server):
    """A model that answers with megabytes: the round is cut at the output
    limit (STOP_REASON_OUTPUT_LIMIT), `done` does not repeat the answer and
    fits the message limit, ListMessages and ExportSession page by bytes."""
    app = await start_app(app_settings(
        fake_model, tool_server, max_message_bytes=1024 * 1024, max_output_chars=300_000,
    ))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("chatty")
            session = await client.create_session("chatty", "reader")
            fake_model.responder.push(text_reply("x" * 600_000, chunk_size=20_000))
            reply = await client.send_to(session.id, "Write a lot", timeout=60)
            response = reply.response
            assert response.stop_reason == event_pb2.STOP_REASON_OUTPUT_LIMIT
            assert 300_000 <= len(response.final_response) < 320_000
            assert response.steps[-1].message.content == ""  # not repeated
            assert reply.ByteSize() < 1024 * 1024

            for _ in range(2):
                fake_model.responder.push(text_reply("y" * 200_000, chunk_size=20_000))
                more = await client.send_to(session.id, "More", timeout=60)
                assert more.response.final_response == "y" * 200_000, more.response.error
            history = await client.list_messages(session.id)  # pages of about 256 KiB
            assert [len(m.content) for m in history if m.role == message_pb2.ROLE_ASSISTANT] == [
                len(response.final_response), 200_000, 200_000,
            ]
            first = await client.sessions.ListMessages(
                session_service_pb2.ListMessagesRequest(session_id=session.id, page_size=100),
                timeout=10,
            )
            assert 1 <= len(first.messages) < len(history) and first.next_page_token

            exported = await client.export_session(session.id)  # several pages, joined
            page = await client.sessions.ExportSession(
                session_service_pb2.ExportSessionRequest(session_id=session.id), timeout=10
            )
            assert page.next_page_token and len(page.content) < len(exported)
            imported = await client.import_session(exported)
            assert [m.content for m in await client.list_messages(imported.id)] == [
                m.content for m in history
            ]
    finally:
        await app.stop(0)
