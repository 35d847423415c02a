"""The agent loop end to end: gRPC client → runtime
→ fake OpenAI-compatible model server over HTTP, and the reference
ToolExecutor over gRPC."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from pilothouse.client import PilothouseRpcError
from pilothouse.testmodel import (
    JSONReply,
    Pause,
    SSEReply,
    cut_reply,
    empty_reply,
    error_in_stream_reply,
    text_reply,
    tool_calls_reply,
)
from pilothouse.v1 import event_pb2, message_pb2
from tests.conftest import GATES, collect, gate, kinds, shape, wait_until

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


async def test_text_answer_streams_segments_and_is_stored(client, fake_model, session_of):
    session_id = await session_of(system_prompt="You are terse.")
    fake_model.responder.push(text_reply("Hello there, friend.", chunk_size=5, usage=USAGE))

    events = await collect(client.stream_to(session_id, "Hi!", "alice"))

    assert kinds(events) == [
        "run_started", "text_start", "text_delta", "text_delta", "text_delta", "text_delta",
        "text_end", "usage", "context_usage", "done",
    ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.session_id for e in events} == {session_id}
    assert len({e.run_id for e in events}) == 1
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == "Hello there, friend."
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.final_response == "Hello there, friend."
    assert done.iterations == 1
    assert done.model == "fake-model"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (11, 7)
    assert events[-3].usage.iteration == 1
    context = events[-2].context_usage
    assert context.reported_prompt_tokens == 11
    assert context.context_window == 128000
    assert context.estimated_prompt_tokens > 0

    # The request the model saw: system prompt, then the user message.
    request = fake_model.requests[-1]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
    ]
    assert "tools" not in request

    # Done is sent only after the history was stored.
    messages = await client.list_messages(session_id)
    assert [(m.role, m.content, m.sender) for m in messages] == [
        (message_pb2.ROLE_USER, "Hi!", "alice"),
        (message_pb2.ROLE_ASSISTANT, "Hello there, friend.", ""),
    ]
    assert (await client.get_session(session_id)).message_count == 2


async def test_tool_call_with_fragmented_arguments(client, fake_model, session_of):
    session_id = await session_of(tools=("calculate",))
    arguments = json.dumps({"expression": "17 * 23 + 4"})
    fake_model.responder.push(
        tool_calls_reply([("call_a", "calculate", arguments)], fragment_size=3),
        text_reply("It is 395."),
    )

    events = await collect(client.stream_to(session_id, "What is 17*23+4?"))

    assert kinds(events) == [
        "run_started", "tool_calls_begin", "context_usage", "tool_calls_start", "tool_result",
        "tool_calls_complete", "text_start", "text_delta", "text_delta", "text_delta",
        "text_end", "context_usage", "done",
    ]
    begin = events[1].tool_calls_begin.tool_calls
    assert [c.name for c in begin] == ["calculate"]
    start = events[3].tool_calls_start.tool_calls
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in start] == [
        ("call_a", "calculate", {"expression": "17 * 23 + 4"})
    ]
    result = events[4].tool_result
    assert (result.call_id, result.name, result.WhichOneof("outcome")) == ("call_a", "calculate", "output")
    assert result.output.strip() == "395"
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.iterations == 2
    assert [s.finish_reason for s in done.steps] == ["tool_calls", "stop"]
    assert done.steps[0].tool_results[0].output.strip() == "395"

    # Second request carries the assistant tool call and the tool message.
    second = fake_model.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"] == {"name": "calculate", "arguments": arguments}
    assert second[-1] == {"role": "tool", "content": result.output, "tool_call_id": "call_a"}
    assert fake_model.requests[0]["tools"][0]["function"]["name"] == "calculate"
    assert fake_model.requests[0]["tool_choice"] == "auto"

    history = await client.list_messages(session_id)
    assert [m.role for m in history] == [
        message_pb2.ROLE_USER, message_pb2.ROLE_ASSISTANT, message_pb2.ROLE_TOOL, message_pb2.ROLE_ASSISTANT,
    ]
    assert history[2].tool_call_id == "call_a" and history[2].name == "calculate"


async def test_parallel_tool_calls_complete_out_of_order_but_store_in_call_order(
    client, fake_model, session_of
):
    session_id = await session_of(tools=("wait_for_gate",))
    fake_model.responder.push(
        tool_calls_reply(
            [
                ("call_slow", "wait_for_gate", json.dumps({"name": "p-slow"})),
                ("call_fast", "wait_for_gate", json.dumps({"name": "p-fast"})),
            ],
            fragment_size=None,
        ),
        text_reply("Both gates opened."),
    )

    events = []
    async for event in client.stream_to(session_id, "Open both"):
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "tool_calls_start":
            gate("p-fast").set()  # the second call finishes first...
        elif kind == "tool_result" and event.tool_result.call_id == "call_fast":
            gate("p-slow").set()  # ...and only then the first

    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [r.call_id for r in results] == ["call_fast", "call_slow"]
    assert [r.output for r in results] == ["gate p-fast opened", "gate p-slow opened"]
    done = events[-1].done
    assert [r.call_id for r in done.steps[0].tool_results] == ["call_slow", "call_fast"]
    tool_messages = [m for m in await client.list_messages(session_id) if m.role == message_pb2.ROLE_TOOL]
    assert [m.tool_call_id for m in tool_messages] == ["call_slow", "call_fast"]
    sent = [m for m in fake_model.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in sent] == ["call_slow", "call_fast"]


async def test_thinking_segments_and_reasoning_effort(client, fake_model, session_of):
    session_id = await session_of(thinking=True)
    fake_model.responder.push(text_reply("Four.", reasoning="2 plus 2 is 4", chunk_size=6))

    events = await collect(client.stream_to(session_id, "2+2?"))

    assert kinds(events) == [
        "run_started", "thinking_start", "thinking_delta", "thinking_delta", "thinking_delta",
        "thinking_end", "text_start", "text_delta", "text_end", "context_usage", "done",
    ]
    thought = "".join(e.thinking_delta.text for e in events if e.HasField("thinking_delta"))
    assert thought == "2 plus 2 is 4"
    assert fake_model.requests[-1]["reasoning_effort"] == "high"
    history = await client.list_messages(session_id)
    assert history[-1].reasoning_content == "2 plus 2 is 4"
    assert history[-1].content == "Four."


async def test_max_iterations_stops_with_valid_history(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), max_iterations=2)
    for n in (1, 2):
        fake_model.responder.push(
            tool_calls_reply([(f"call_{n}", "text_stats", json.dumps({"text": "a b"}))])
        )

    events = await collect(client.stream_to(session_id, "Loop forever"))

    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_MAX_ITERATIONS
    assert done.iterations == 2
    assert len(fake_model.requests) == 2
    roles = [m.role for m in await client.list_messages(session_id)]
    assert roles == [message_pb2.ROLE_USER] + [message_pb2.ROLE_ASSISTANT, message_pb2.ROLE_TOOL] * 2


async def test_empty_round_is_no_action_and_stores_nothing_for_it(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(empty_reply())

    events = await collect(client.stream_to(session_id, "Say nothing"))

    assert kinds(events) == ["run_started", "context_usage", "done"]
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_NO_ACTION
    assert events[-1].done.iterations == 0
    history = await client.list_messages(session_id)
    assert [(m.role, m.content) for m in history] == [(message_pb2.ROLE_USER, "Say nothing")]


async def test_stream_error_mid_round_ends_with_error_and_keeps_history(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    failing = error_in_stream_reply("half an ans", message="upstream overloaded", code="overloaded")
    fake_model.responder.push(
        tool_calls_reply([("call_1", "text_stats", json.dumps({"text": "x"}))]),
        failing, failing, failing,  # the round and its two retries
    )

    events = await collect(client.stream_to(session_id, "Count"))

    # Each attempt's partial text was streamed and its segment closed; the
    # first two were followed by round_retried, the last by Done(ERROR).
    attempt = ["text_start", "text_delta", "text_delta", "text_delta", "text_end"]
    after = kinds(events)[kinds(events).index("tool_calls_complete") + 1:]
    assert after == [*attempt, "round_retried", *attempt, "round_retried", *attempt, "done"]
    retried = [e.round_retried for e in events if e.HasField("round_retried")]
    assert [r.attempt for r in retried] == [1, 2]
    assert all(r.cause == "error_event" and "upstream overloaded" in r.error for r in retried)
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == "half an ans" * 3
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_ERROR
    assert "upstream overloaded" in done.error
    assert done.iterations == 1
    # The failed round left no trace; the completed tool round is kept.
    history = await client.list_messages(session_id)
    assert [m.role for m in history] == [
        message_pb2.ROLE_USER, message_pb2.ROLE_ASSISTANT, message_pb2.ROLE_TOOL,
    ]
    assert all("half" not in m.content for m in history)


async def test_stream_cut_before_done_is_an_error(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(cut_reply("partial answ"))

    events = await collect(client.stream_to(session_id, "Hello"))

    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_ERROR
    assert done.error
    assert [m.role for m in await client.list_messages(session_id)] == [message_pb2.ROLE_USER]


async def test_http_429_is_retried_then_succeeds(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(
        JSONReply(
            429,
            {"error": {"message": "Rate limit reached", "type": "rate_limit", "code": "rate_limit_exceeded"}},
            headers={"Retry-After": "0"},
        ),
        text_reply("After the retry."),
    )

    response = await client.send_to(session_id, "Hello", timeout=30)

    assert response.response.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert response.response.final_response == "After the retry."
    assert len(fake_model.requests) == 2


async def test_http_400_ends_run_with_error_naming_the_cause(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(
        JSONReply(400, {"error": {"message": "Invalid image URL", "type": "invalid_request_error",
                                  "param": None, "code": "invalid_image_url"}})
    )

    response = await client.send_to(session_id, "Hello", timeout=30)

    assert response.response.stop_reason == event_pb2.STOP_REASON_ERROR
    assert "Invalid image URL" in response.response.error
    assert "400" in response.response.error
    assert len(fake_model.requests) == 1


async def test_tool_error_is_read_by_the_model_and_the_run_goes_on(client, fake_model, session_of):
    session_id = await session_of(tools=("fail",))
    fake_model.responder.push(
        tool_calls_reply([("call_f", "fail", json.dumps({"message": "disk on fire"}))]),
        text_reply("The tool failed."),
    )

    events = await collect(client.stream_to(session_id, "Try it"))

    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.WhichOneof("outcome") == "error"
    assert "disk on fire" in result.error
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    tool_message = fake_model.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "disk on fire" in tool_message["content"]


async def test_invalid_tool_arguments_are_an_error_result(client, fake_model, session_of):
    session_id = await session_of(tools=("calculate",))
    fake_model.responder.push(
        tool_calls_reply([("call_x", "calculate", '{"expr": 1')]),
        text_reply("Oops."),
    )

    events = await collect(client.stream_to(session_id, "Compute"))

    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.WhichOneof("outcome") == "error"
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE


async def test_tool_the_agent_does_not_have_is_refused(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("call_c", "calculate", json.dumps({"expression": "1+1"}))]),
        text_reply("Fine."),
    )

    events = await collect(client.stream_to(session_id, "Compute"))

    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert "not available" in result.error
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE


async def test_send_to_returns_the_whole_response(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("call_1", "text_stats", json.dumps({"text": "one two three"}))], usage=USAGE),
        text_reply("Three words.", usage=USAGE),
    )

    reply = await client.send_to(session_id, "Count the words", timeout=30)

    assert reply.run_id
    response = reply.response
    assert response.final_response == "Three words."
    assert response.iterations == 2
    assert response.usage.total_tokens == 36
    assert response.steps[0].tool_calls[0].name == "text_stats"
    assert json.loads(response.steps[0].tool_results[0].output)["words"] == 3


async def test_steer_injects_a_user_message_before_the_next_round(app, client, fake_model, session_of):
    session_id = await session_of(tools=("wait_for_gate",))
    fake_model.responder.push(
        tool_calls_reply([("call_g", "wait_for_gate", json.dumps({"name": "steer-1"}))]),
        text_reply("Done, and in French: fini."),
    )

    stream = await client.steer(session_id, "Open the gate", "bob")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("tool_calls_start"):
            await stream.send("Also answer in French.")
            run = app.runtime.active_run(session_id)
            await wait_until(run.control.steering.pending)  # the server has queued it
            gate("steer-1").set()

    assert shape(events) == [
        "run_started", "tool_calls_begin", "context_usage", "tool_calls_start", "tool_result",
        "tool_calls_complete", "user_steered", "text_start", "text_delta", "text_end",
        "context_usage", "done",
    ]
    steered = next(e.user_steered for e in events if e.HasField("user_steered"))
    assert (steered.content, steered.sender) == ("Also answer in French.", "bob")
    assert kinds(events).index("user_steered") > kinds(events).index("tool_calls_complete")
    second = fake_model.requests[1]["messages"]
    assert second[-1] == {"role": "user", "content": "Also answer in French."}
    assert second[-2]["role"] == "tool"
    history = await client.list_messages(session_id)
    assert [(m.role, m.content) for m in history][-2] == (message_pb2.ROLE_USER, "Also answer in French.")


async def test_steer_closing_the_client_side_does_not_cancel_the_run(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("Still here."))

    stream = await client.steer(session_id, "Hello")
    await stream.done_writing()
    events = [e async for e in stream]

    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert events[-1].done.final_response == "Still here."


async def test_run_outlives_a_disconnected_stream(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(
        SSEReply([*text_reply("First part, ").events[:2], Pause(release), *text_reply("rest.").events[1:]])
    )

    stream = client.stream_to(session_id, "Tell me")
    async for event in stream:
        if event.HasField("text_delta"):
            break  # the client goes away mid-run
    await stream.aclose()
    run = app.runtime.active_run(session_id)
    assert run is not None
    release.set()
    response = await run.wait()

    assert response.stop_reason.value == "text_response"
    history = await client.list_messages(session_id)
    assert [m.role for m in history] == [message_pb2.ROLE_USER, message_pb2.ROLE_ASSISTANT]
    assert history[1].content.endswith("rest.")


async def test_second_run_on_a_busy_session_fails_precondition(app, client, fake_model, session_of):
    session_id = await session_of()
    release = asyncio.Event()
    fake_model.responder.push(SSEReply([Pause(release), *text_reply("ok").events]))
    first = asyncio.create_task(client.send_to(session_id, "one", timeout=30))
    await wait_until(lambda: app.runtime.active_run(session_id) is not None)
    run_id = app.runtime.active_run(session_id).id

    with pytest.raises(PilothouseRpcError) as error:
        await client.send_to(session_id, "two", timeout=30)

    assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.reason == "RUN_ACTIVE"
    assert error.value.metadata == {
        "session_id": session_id, "active_run_id": run_id, "lease_expired": "false"
    }
    assert (await client.get_session(session_id)).active_run_id == run_id
    release.set()
    assert (await first).response.final_response == "ok"
    assert (await client.get_session(session_id)).active_run_id == ""
    assert [m.content for m in await client.list_messages(session_id)] == ["one", "ok"]
    GATES.clear()
