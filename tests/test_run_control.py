"""Steering, cancellation, reconnects, double texting, approvals, questions
and guards, over real gRPC channels. Timing is made deterministic with the
fake model's `Pause` and the `wait_for_gate` tool, never with sleeps."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError, decision
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import (
    agent_pb2,
    event_pb2,
    message_pb2,
    run_service_pb2,
    tool_executor_service_pb2 as tx,
    tool_executor_service_pb2_grpc as tx_grpc,
)
from tests.conftest import (
    CANCELLED_GATES,
    app_settings,
    assert_valid_history,
    collect,
    gate,
    kinds,
    wait_until,
)

RO = run_service_pb2.RunOptions


def held_text(text: str, release: asyncio.Event) -> SSEReply:
    """A text reply that stops after its first delta until `release` is set."""
    events = text_reply(text, chunk_size=4).events
    return SSEReply([*events[:2], Pause(release), *events[2:]])


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def gate_call(call_id: str, name: str) -> SSEReply:
    return tool_calls_reply([(call_id, "wait_for_gate", json.dumps({"name": name}))])


async def first(stream, kind: str):
    """Read `stream` until an event of `kind`; return (events so far, event)."""
    seen = []
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("event") == kind:
            return seen, event
    raise AssertionError(f"stream ended without {kind}: {kinds(seen)}")


# --- Steering ------------------------------------------------------------------


async def test_several_steering_messages_keep_their_order(app, client, fake_model, session_of):
    session_id = await session_of(tools=("wait_for_gate",))
    fake_model.responder.push(gate_call("g1", "order-1"), text_reply("Noted both."))

    stream = await client.steer(session_id, "Start", "ann")
    events, _ = await first(stream, "tool_calls_start")
    await stream.send("first steer")
    await stream.send("second steer", "bea")
    run = app.runtime.active_run(session_id)
    await wait_until(lambda: len(run.control.steering._queue) == 2)
    gate("order-1").set()
    events += [e async for e in stream]

    steered = [(e.user_steered.content, e.user_steered.sender) for e in events if e.HasField("user_steered")]
    assert steered == [("first steer", "ann"), ("second steer", "bea")]
    sent = fake_model.requests[1]["messages"]
    assert [m["content"] for m in sent[-2:]] == ["first steer", "second steer"]
    history = await client.list_messages(session_id)
    assert [m.content for m in history if m.role == message_pb2.ROLE_USER] == [
        "Start", "first steer", "second steer",
    ]
    assert_valid_history(history)


async def test_steering_during_the_last_round_gets_a_follow_up_round(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("First answer.", release), text_reply("Follow-up answer."))

    stream = await client.steer(session_id, "Question")
    events, _ = await first(stream, "text_delta")
    await stream.send("Actually, also this")
    run = app.runtime.active_run(session_id)
    await wait_until(run.control.steering.pending)
    release.set()
    events += [e async for e in stream]

    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.final_response == "Follow-up answer."
    assert done.iterations == 2
    assert list(done.unapplied_steering) == []
    assert fake_model.requests[1]["messages"][-1] == {"role": "user", "content": "Actually, also this"}


async def test_late_steering_can_be_returned_unapplied(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("Only answer.", release))

    stream = await client.steer(
        session_id, "Question", options=RO(late_steering=run_service_pb2.LATE_STEERING_POLICY_RETURN)
    )
    await first(stream, "text_delta")
    await stream.send("Too late")
    run = app.runtime.active_run(session_id)
    await wait_until(run.control.steering.pending)
    release.set()
    events = [e async for e in stream]

    done = events[-1].done
    assert done.final_response == "Only answer."
    assert [(s.content, s.sender) for s in done.unapplied_steering] == [("Too late", "")]
    assert len(fake_model.requests) == 1
    assert "Too late" not in [m.content for m in await client.list_messages(session_id)]


async def test_steer_session_from_another_client(app, client, fake_model, session_of):
    session_id = await session_of(tools=("wait_for_gate",))
    fake_model.responder.push(gate_call("g", "other-client"), text_reply("ok"))

    stream = client.stream_to(session_id, "Work")
    events, _ = await first(stream, "tool_calls_start")
    async with PilothouseClient(f"127.0.0.1:{app.port}") as other:
        run_id = await other.steer_session(session_id, "From the CLI", "ops")
    assert run_id == events[0].run_id
    gate("other-client").set()
    events += [e async for e in stream]

    steered = [e.user_steered for e in events if e.HasField("user_steered")]
    assert [(s.content, s.sender) for s in steered] == [("From the CLI", "ops")]

    error = await _rpc_error(client.steer_session(session_id, "nobody listens"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "NO_ACTIVE_RUN"


async def _rpc_error(awaitable) -> PilothouseRpcError:
    with pytest.raises(PilothouseRpcError) as error:
        await awaitable
    return error.value


# --- Cancellation ----------------------------------------------------------------


async def test_cancel_during_the_model_stream_closes_it(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("This will never finish.", release))
    fake_model.server.disconnected.clear()

    stream = client.stream_to(session_id, "Talk")
    events, _ = await first(stream, "text_delta")
    reply = await client.cancel(session_id, reason="changed my mind")
    events += [e async for e in stream]

    assert (reply.run_id, reply.already_finished) == (events[0].run_id, False)
    assert reply.stop_reason == event_pb2.STOP_REASON_CANCELLED
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_CANCELLED
    assert "changed my mind" in done.error
    await asyncio.wait_for(fake_model.server.disconnected.wait(), 10)  # the HTTP stream was closed
    release.set()
    history = await client.list_messages(session_id)
    assert [(m.role, m.content) for m in history] == [(message_pb2.ROLE_USER, "Talk")]

    again = await client.cancel(session_id, reply.run_id)
    assert again.already_finished and again.stop_reason == event_pb2.STOP_REASON_CANCELLED


async def test_cancel_during_a_slow_tool_cancels_the_executor_call(app, client, fake_model, session_of):
    session_id = await session_of(tools=("wait_for_gate", "text_stats"))
    fake_model.responder.push(
        tool_calls_reply([
            ("fast", "text_stats", json.dumps({"text": "a b"})),
            ("slow", "wait_for_gate", json.dumps({"name": "never-opened"})),
        ])
    )

    stream = await client.steer(session_id, "Do both")
    events, _ = await first(stream, "tool_result")
    await stream.cancel_run("stop now")
    events += [e async for e in stream]

    results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
    assert results["fast"].WhichOneof("outcome") == "output"
    assert results["slow"].error == "cancelled: stop now"
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_CANCELLED
    await wait_until(lambda: "never-opened" in CANCELLED_GATES)  # the ToolExecutor saw it
    history = await client.list_messages(session_id)
    assert_valid_history(history)
    assert [m.tool_call_id for m in history if m.role == message_pb2.ROLE_TOOL] == ["fast", "slow"]
    assert history[-1].content == "cancelled: stop now"


async def test_cancel_a_finished_run_is_ok(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("Done already."))
    reply = await client.send_to(session_id, "Hi", timeout=30)

    cancelled = await client.cancel(session_id, reply.run_id)

    assert cancelled.already_finished
    assert cancelled.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    error = await _rpc_error(client.cancel(session_id, "no-such-run"))
    assert error.code is grpc.StatusCode.NOT_FOUND


# --- Disconnect and reconnect ----------------------------------------------------


async def test_reattach_after_a_disconnect_misses_nothing(app, client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    release = asyncio.Event()
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "x y"}))]),
        held_text("The end of the story.", release),
    )

    stream = client.stream_to(session_id, "Go")
    before, _ = await first(stream, "text_delta")
    await stream.aclose()  # the client loses its stream (CONTINUE is the default)
    release.set()
    after = await collect(client.attach(session_id, before[0].run_id, before[-1].sequence))

    everything = before + after
    assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
    assert everything[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    # Attaching from the start replays the same log.
    replay = await collect(client.attach(session_id, before[0].run_id))
    assert [e.SerializeToString() for e in replay] == [e.SerializeToString() for e in everything]


async def test_reattach_with_steer_and_without_run_id(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("Attached.", release))
    stream = client.stream_to(session_id, "Go")
    before, _ = await first(stream, "text_delta")
    await stream.aclose()

    # Attached from one event back, so the first event (a replay) shows
    # the attach is established before the run is let go to finish.
    steer = await client.steer_attach(session_id, after_sequence=before[-1].sequence - 1)
    events = aiter(steer)
    replayed = await anext(events)
    release.set()
    after = [e async for e in events]

    assert replayed.sequence == before[-1].sequence
    assert after[0].sequence == before[-1].sequence + 1
    assert after[-1].done.final_response == "Attached."


async def test_disconnect_with_cancel_policy_cancels_the_run(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("Nobody hears this.", release))

    stream = client.stream_to(
        session_id, "Go", options=RO(on_disconnect=run_service_pb2.DISCONNECT_POLICY_CANCEL)
    )
    events, _ = await first(stream, "text_delta")
    await stream.aclose()
    run = await app.runtime.find_run(session_id, events[0].run_id)
    response = await asyncio.wait_for(run.wait(), 10)

    assert response.stop_reason.value == "cancelled"
    release.set()


async def test_events_are_durable_until_the_event_log_retention(fake_model, tool_server):
    """A finished run leaves memory after PILOTHOUSE_EVENT_RETENTION; its
    events are then read from the store, the same as live, until the event
    log retention prunes them (its `done` stays)."""
    app = await start_app(app_settings(fake_model, tool_server, event_retention=0.0))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("retention", tools=[])
            session = await client.create_session("retention")
            fake_model.responder.push(text_reply("Short-lived."))
            live = await collect(client.stream_to(session.id, "Hi"))
            run_id = live[0].run_id
            await wait_until(lambda: app.runtime.scheduler.local(run_id) is None)

            replayed = await collect(client.attach(session.id, run_id, 0))
            assert [e.SerializeToString() for e in replayed] == [e.SerializeToString() for e in live]
            tail = await collect(client.attach(session.id, run_id, 2))
            assert [e.sequence for e in tail] == [e.sequence for e in live[2:]]
            error = await _rpc_error(collect(client.attach(session.id, run_id, live[-1].sequence + 5)))
            assert error.code is grpc.StatusCode.OUT_OF_RANGE
            assert error.reason == "SEQUENCE_PAST_END"

            await app.runtime.store.prune_events(time.time() + 1)
            error = await _rpc_error(collect(client.attach(session.id, run_id, 0)))
            assert error.code is grpc.StatusCode.OUT_OF_RANGE
            assert error.metadata["oldest_available_sequence"] == str(live[-1].sequence)
            done = await collect(client.attach(session.id, run_id, live[-1].sequence - 1))
            assert [e.WhichOneof("event") for e in done] == ["done"]
    finally:
        await app.stop(0)

async def test_heartbeats_while_the_run_is_quiet(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("After the pause.", release))

    stream = client.stream_to(session_id, "Wait", options=RO(heartbeat_interval=seconds(0.02)))
    events, beat = await first(stream, "heartbeat")
    release.set()
    events += [e async for e in stream]

    # A heartbeat carries the sequence of the last event sent before it.
    assert beat.sequence == max(e.sequence for e in events[: events.index(beat)])
    logged = [e for e in events if not e.HasField("heartbeat")]
    assert [e.sequence for e in logged] == list(range(1, len(logged) + 1))
    replay = await collect(client.attach(session_id, events[0].run_id))
    assert not any(e.HasField("heartbeat") for e in replay)


# --- Double texting --------------------------------------------------------------


async def test_enqueue_runs_after_the_active_run(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("First reply.", release), text_reply("Second reply."))

    first_stream = client.stream_to(session_id, "one")
    first_events, _ = await first(first_stream, "text_delta")
    second_task = asyncio.create_task(
        collect(client.stream_to(session_id, "two", options=RO(if_active=run_service_pb2.ACTIVE_RUN_POLICY_ENQUEUE)))
    )
    await wait_until(lambda: bool(app.runtime.queued_runs(session_id)))
    release.set()
    first_events += [e async for e in first_stream]
    second_events = await second_task

    assert second_events[0].run_queued.position == 1
    assert kinds(second_events)[1] == "run_started"
    assert second_events[-1].done.final_response == "Second reply."
    assert second_events[0].run_id != first_events[0].run_id
    history = await client.list_messages(session_id)
    assert [m.content for m in history] == ["one", "First reply.", "two", "Second reply."]


async def test_interrupt_cancels_the_active_run_then_starts(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("Interrupted reply.", release), text_reply("New reply."))

    first_stream = client.stream_to(session_id, "old question")
    first_events, _ = await first(first_stream, "text_delta")
    reply = await client.send_to(
        session_id, "new question", options=RO(if_active=run_service_pb2.ACTIVE_RUN_POLICY_INTERRUPT),
        timeout=30,
    )
    first_events += [e async for e in first_stream]
    release.set()

    assert first_events[-1].done.stop_reason == event_pb2.STOP_REASON_CANCELLED
    assert reply.response.final_response == "New reply."
    history = await client.list_messages(session_id)
    assert [m.content for m in history] == ["old question", "new question", "New reply."]
    assert_valid_history(history)


async def test_steer_policy_injects_into_the_active_run(app, client, fake_model, session_of):
    session_id = await session_of(tools=("wait_for_gate",))
    fake_model.responder.push(gate_call("g", "steer-policy"), text_reply("Combined answer."))

    first_stream = client.stream_to(session_id, "first")
    first_events, _ = await first(first_stream, "tool_calls_start")
    second = client.stream_to(
        session_id, "and this too", options=RO(if_active=run_service_pb2.ACTIVE_RUN_POLICY_STEER)
    )
    second_events, _ = await first(second, "tool_calls_start")  # it follows the same run
    gate("steer-policy").set()
    first_events += [e async for e in first_stream]
    second_events += [e async for e in second]

    assert {e.run_id for e in first_events} == {e.run_id for e in second_events}
    assert [e.user_steered.content for e in first_events if e.HasField("user_steered")] == ["and this too"]
    assert second_events[-1].done.final_response == "Combined answer."


# --- Approvals and questions -------------------------------------------------------


async def test_approval_approve_and_deny(app, client, fake_model, session_of):
    session_id = await session_of(tools=("delete_records", "text_stats"))
    fake_model.responder.push(
        tool_calls_reply([
            ("keep", "delete_records", json.dumps({"table": "audit"})),
            ("drop", "delete_records", json.dumps({"table": "users"})),
            ("free", "text_stats", json.dumps({"text": "no approval needed"})),
        ]),
        text_reply("One table emptied."),
    )

    stream = await client.steer(session_id, "Clean up")
    events = []
    asked = []
    async for event in stream:
        events.append(event)
        if event.HasField("approval_required"):
            asked.append(event.approval_required)
            request_id = event.approval_required.request_id
            if event.approval_required.tool_call.id == "keep":
                await stream.decide(decision(request_id, event_pb2.VERDICT_APPROVE))
            else:
                await stream.decide(decision(request_id, event_pb2.VERDICT_DENY, reason="not the users!"))

    # Request ids are the server's, not the model's call ids.
    assert sorted(a.tool_call.id for a in asked) == ["drop", "keep"]
    assert len({a.request_id for a in asked}) == 2
    assert not {a.request_id for a in asked} & {"drop", "keep"}
    request_of = {a.request_id: a.tool_call.id for a in asked}
    assert all("ToolExecutor declares" in a.reason for a in asked)
    assert asked[0].tool_call.name == "delete_records"
    results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
    assert results["keep"].output == "deleted all records of audit"
    assert results["drop"].error == "the user denied this call to delete_records: not the users!"
    assert results["free"].WhichOneof("outcome") == "output"
    applied = {request_of[e.decision_applied.request_id]: e.decision_applied.decision.verdict
               for e in events if e.HasField("decision_applied")}
    assert applied == {"keep": event_pb2.VERDICT_APPROVE, "drop": event_pb2.VERDICT_DENY}
    assert_valid_history(await client.list_messages(session_id))


async def test_approve_always_is_remembered_for_the_session(app, client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), approval_policy=agent_pb2.APPROVAL_POLICY_ALWAYS)
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "one"}))]), text_reply("ok"),
        tool_calls_reply([("c2", "text_stats", json.dumps({"text": "two"}))]), text_reply("ok again"),
    )

    stream = await client.steer(session_id, "first")
    async for event in stream:
        if event.HasField("approval_required"):
            await stream.decide(decision(event.approval_required.request_id, event_pb2.VERDICT_APPROVE_ALWAYS))
    assert list((await client.get_session(session_id)).always_approved_tools) == ["text_stats"]

    events = await collect(client.stream_to(session_id, "second"))
    assert "approval_required" not in kinds(events)
    assert events[-1].done.final_response == "ok again"


async def test_decision_after_reconnect_and_decision_timeout(app, client, fake_model, session_of):
    session_id = await session_of(tools=("delete_records",))
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", json.dumps({"table": "t"}))]), text_reply("done"),
    )
    stream = client.stream_to(session_id, "delete it")
    before, asked = await first(stream, "approval_required")
    assert asked.approval_required.tool_call.name == "delete_records"
    await stream.aclose()  # the client leaves while the run waits

    error = await _rpc_error(client.submit_decision(session_id, decision("nope", event_pb2.VERDICT_APPROVE)))
    assert error.code is grpc.StatusCode.NOT_FOUND
    error = await _rpc_error(client.submit_decision(session_id, decision("d1", event_pb2.VERDICT_APPROVE)))
    assert error.code is grpc.StatusCode.NOT_FOUND  # the model's call id is not the request id
    run_id = await client.submit_decision(
        session_id, decision(asked.approval_required.request_id, event_pb2.VERDICT_APPROVE)
    )
    after = await collect(client.attach(session_id, run_id, before[-1].sequence))
    result = next(e.tool_result for e in after if e.HasField("tool_result"))
    assert result.output == "deleted all records of t"

    # Nobody answers: the wait ends with a denial the model reads.
    fake_model.responder.push(
        tool_calls_reply([("d2", "delete_records", json.dumps({"table": "u"}))]), text_reply("ok"),
    )
    events = await collect(client.stream_to(session_id, "again", options=RO(decision_timeout=seconds(0.05))))
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.error.startswith("the user denied this call to delete_records: no decision within")
    applied = next(e.decision_applied for e in events if e.HasField("decision_applied"))
    assert applied.decision.verdict == event_pb2.VERDICT_DENY


async def test_ask_user_question_answered_through_a_decision(app, client, fake_model, session_of):
    session_id = await session_of(tools=("ask_user",))
    question = {"question": "Which colour?", "options": ["red", "blue"], "multi_select": False}
    fake_model.responder.push(
        tool_calls_reply([("q1", "ask_user", json.dumps(question))]), text_reply("Blue it is."),
    )

    stream = await client.steer(session_id, "Paint it")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("question_asked"):
            asked = event.question_asked
            assert (asked.question, list(asked.options), asked.multi_select) == ("Which colour?", ["red", "blue"], False)
            error = await _rpc_error(
                client.submit_decision(session_id, decision(asked.request_id, selected_options=["green"]))
            )
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT
            await stream.decide(decision(asked.request_id, selected_options=["blue"]))

    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert json.loads(result.output) == {"selected_options": ["blue"]}
    assert fake_model.requests[0]["tools"][0]["function"]["name"] == "ask_user"
    assert events[-1].done.final_response == "Blue it is."


# --- Guards ----------------------------------------------------------------------


async def test_wall_clock_limit_ends_the_run_with_timeout(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(held_text("Too slow.", release))

    events = await collect(client.stream_to(session_id, "Hurry", options=RO(timeout=seconds(0.1))))
    release.set()

    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TIMEOUT
    assert "time limit" in done.error
    assert [m.content for m in await client.list_messages(session_id)] == ["Hurry"]


async def test_token_budget_stops_before_the_next_round(app, client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c", "text_stats", json.dumps({"text": "x"}))],
                         usage={"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50})
    )

    events = await collect(client.stream_to(session_id, "Go", options=RO(token_budget=30)))

    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_BUDGET_EXCEEDED
    assert done.usage.total_tokens == 50
    assert len(fake_model.requests) == 1
    assert_valid_history(await client.list_messages(session_id))


async def test_session_busy_on_another_replica_is_rejected(fake_model, tool_server, tmp_path):
    """Two runtimes on one SQLite file: the store's run lease keeps one run
    per session across them."""
    apps = []
    try:
        for _ in range(2):
            settings = app_settings(
                fake_model, tool_server, store_url="sqlite:///shared.db", data_dir=tmp_path
            )
            apps.append(await start_app(settings))
        async with PilothouseClient(f"127.0.0.1:{apps[0].port}") as one, \
                PilothouseClient(f"127.0.0.1:{apps[1].port}") as two:
            await one.create_agent("shared-agent")  # the registry is shared too
            session = await two.create_session("shared-agent")
            release = asyncio.Event()
            fake_model.responder.push(held_text("From replica one.", release))
            stream = one.stream_to(session.id, "hi")
            events, _ = await first(stream, "text_delta")

            error = await _rpc_error(two.send_to(session.id, "me too", timeout=10))
            assert error.code is grpc.StatusCode.FAILED_PRECONDITION
            assert error.metadata["active_run_id"] == events[0].run_id
            release.set()
            events += [e async for e in stream]
            assert [m.content for m in await two.list_messages(session.id)] == ["hi", "From replica one."]
    finally:
        for app in apps:
            await app.stop(0)


async def test_a_client_deadline_follows_the_disconnect_policy(app, client, fake_model, session_of):
    session_id = await session_of()
    for policy, expected in (
        (run_service_pb2.DISCONNECT_POLICY_CONTINUE, "text_response"),
        (run_service_pb2.DISCONNECT_POLICY_CANCEL, "cancelled"),
    ):
        release = asyncio.Event()
        fake_model.responder.push(held_text("Slow answer.", release))
        with pytest.raises(PilothouseRpcError) as error:
            await client.send_to(session_id, "Quick?", options=RO(on_disconnect=policy), timeout=0.3)
        assert error.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        run = await app.runtime.find_run(session_id)
        if expected == "cancelled":
            await wait_until(lambda run=run: run.finished)
        release.set()
        response = await run.wait()
        assert response.stop_reason.value == expected
    assert_valid_history(await client.list_messages(session_id))


async def test_approval_policy_never_and_per_tool(client, fake_model, session_of):
    # NEVER lifts the agent's own rules, not what the ToolExecutor declares.
    session_id = await session_of(
        tools=("delete_records", "text_stats"), approval_policy=agent_pb2.APPROVAL_POLICY_NEVER,
        approval_required_tools=["text_stats"],
    )
    fake_model.responder.push(
        tool_calls_reply([
            ("d", "delete_records", json.dumps({"table": "tmp"})),
            ("s", "text_stats", json.dumps({"text": "x"})),
        ]),
        text_reply("ok"),
    )
    stream = await client.steer(session_id, "go")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("approval_required"):
            assert event.approval_required.tool_call.id == "d"
            assert "ToolExecutor declares" in event.approval_required.reason
            await stream.decide(decision(event.approval_required.request_id, event_pb2.VERDICT_APPROVE))
    assert kinds(events).count("approval_required") == 1
    results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
    assert results["d"].output == "deleted all records of tmp"
    assert results["s"].WhichOneof("outcome") == "output"

    # Per-tool: only the listed tool waits.
    session_id = await session_of(
        tools=("text_stats", "calculate"), approval_required_tools=["calculate"]
    )
    fake_model.responder.push(
        tool_calls_reply([
            ("t", "text_stats", json.dumps({"text": "a"})),
            ("c", "calculate", json.dumps({"expression": "1+1"})),
        ]),
        text_reply("ok"),
    )
    stream = await client.steer(session_id, "go")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("approval_required"):
            assert event.approval_required.tool_call.id == "c"
            assert "policy requires approval of this tool" in event.approval_required.reason
            await stream.decide(decision(event.approval_required.request_id, event_pb2.VERDICT_APPROVE))
    assert kinds(events).count("approval_required") == 1
    assert {e.tool_result.call_id for e in events if e.HasField("tool_result")} == {"t", "c"}


async def test_a_tool_can_ask_the_user_before_it_finishes(client, fake_model, session_of, tool_server):
    session_id = await session_of(tools=("confirm",))
    fake_model.responder.push(
        tool_calls_reply([("k1", "confirm", json.dumps({"action": "reboot the server"}))]),
        text_reply("Rebooted."),
    )

    stream = await client.steer(session_id, "Reboot it")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("question_asked"):
            asked = event.question_asked
            assert asked.question == "Really reboot the server?"
            assert asked.request_id.startswith("req_")
            assert list(asked.options) == ["yes", "no"]
            await stream.decide(decision(asked.request_id, selected_options=["yes"]))

    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.output == "reboot the server: done"
    assert events[-1].done.final_response == "Rebooted."
    assert_valid_history(await client.list_messages(session_id))

    # The ToolExecutor itself, over gRPC: a question first, the output with the answer.
    import grpc as _grpc


    async with _grpc.aio.insecure_channel(tool_server.address) as channel:
        stub = tx_grpc.ToolExecutorServiceStub(channel)
        request = tx.ExecuteToolRequest(call_id="x", name="confirm", arguments_json='{"action": "a"}')
        first_reply = await stub.ExecuteTool(request, timeout=10)
        assert first_reply.WhichOneof("outcome") == "question"
        request.answer.selected_options.append("no")
        second_reply = await stub.ExecuteTool(request, timeout=10)
        assert second_reply.output == "a: skipped"
