"""Compaction (automatic and CompactSession) and background titles."""

from __future__ import annotations

import json

import grpc
import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.runtime.compaction import COMPACTION_PROMPT
from pilothouse.testmodel import JSONReply, text_reply, tool_calls_reply
from tests.conftest import app_settings, collect, kinds, wait_until


async def test_auto_compaction_replaces_the_history_mid_run(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), compact_threshold=20)
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a long text " * 20}))]),
        text_reply("SUMMARY: the user asked to count words; text_stats ran."),
        text_reply("There were 60 words."),
    )

    events = await collect(client.stream_to(session_id, "Count the words of my long text please"))

    assert "compacted" in kinds(events)
    compacted = next(e.compacted for e in events if e.HasField("compacted"))
    assert compacted.summary == "SUMMARY: the user asked to count words; text_stats ran."
    assert kinds(events).index("compacted") > kinds(events).index("tool_calls_complete")
    summarise = fake_model.requests[1]
    assert summarise["messages"][0] == {"role": "system", "content": COMPACTION_PROMPT}
    assert "tool text_stats returned" in summarise["messages"][1]["content"]
    assert "tools" not in summarise
    # The next round sees only the summary.
    assert fake_model.requests[2]["messages"][1:] == [
        {"role": "user", "content": compacted.summary}
    ]
    assert events[-1].done.final_response == "There were 60 words."
    history = await client.list_messages(session_id)
    assert [m.content for m in history] == [compacted.summary, "There were 60 words."]
    assert (await client.get_session(session_id)).message_count == 2


async def test_compact_session_rpc(app, client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("Paris is the capital of France."))
    await client.send_to(session_id, "What is the capital of France?", timeout=30)
    fake_model.responder.push(text_reply("User learned that Paris is France's capital."))

    reply = await client.compact_session(session_id)

    assert reply.summary == "User learned that Paris is France's capital."
    assert reply.session.message_count == 1
    assert [m.content for m in await client.list_messages(session_id)] == [reply.summary]
    fake_model.responder.push(text_reply("Yes."))
    await client.send_to(session_id, "Right?", timeout=30)
    assert [m["content"] for m in fake_model.requests[-1]["messages"][1:]] == [reply.summary, "Right?"]


async def test_compact_session_refuses_empty_history_and_failing_model(client, fake_model, session_of):
    session_id = await session_of()
    with pytest.raises(PilothouseRpcError) as error:
        await client.compact_session(session_id)
    assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.reason == "HISTORY_EMPTY"

    fake_model.responder.push(text_reply("Hello."))
    await client.send_to(session_id, "Hi", timeout=30)
    fake_model.responder.push(JSONReply(400, {"error": {"message": "context too long", "code": "bad"}}))
    with pytest.raises(PilothouseRpcError) as error:
        await client.compact_session(session_id)
    assert error.value.code is grpc.StatusCode.UNAVAILABLE
    assert "context too long" in error.value.message
    assert [m.content for m in await client.list_messages(session_id)] == ["Hi", "Hello."]


async def test_title_is_generated_after_the_first_exchange(fake_model, tool_server):
    app = await start_app(app_settings(fake_model, tool_server, generate_titles=True))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("titled")
            session = await client.create_session("titled")
            fake_model.responder.push(text_reply("It is sunny in Paris."), text_reply('"Paris Weather Today"'))
            await client.send_to(session.id, "How is the weather in Paris?", timeout=30)
            await wait_until(lambda: fake_model.responder.remaining == 0)
            await wait_until(lambda: app.runtime.background_idle)

            titled = await client.get_session(session.id)
            assert titled.title == "Paris Weather Today"
            title_request = fake_model.requests[-1]["messages"][0]["content"]
            assert title_request.startswith("Summarize this conversation in 3-6 words")
            assert "User: How is the weather in Paris?" in title_request
            assert "Assistant: It is sunny in Paris." in title_request

            # A failing title request leaves the title empty.
            other = await client.create_session("titled", "someone")
            fake_model.responder.push(text_reply("Hello!"), JSONReply(400, {"error": {"message": "no"}}))
            await client.send_to(other.id, "Hi", timeout=30)
            await wait_until(lambda: fake_model.responder.remaining == 0)
            await wait_until(lambda: app.runtime.background_idle)
            assert (await client.get_session(other.id)).title == ""
    finally:
        await app.stop(0)
