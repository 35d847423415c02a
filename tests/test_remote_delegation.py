"""Delegation to remote A2A agents (`remote_delegates`), against small
agents served by the official a2a-sdk in the test (`tests.a2a_agents`):
the task's streamed artifacts become the call's output and show in the
parent's stream, a cancelled parent cancels the A2A task, and a task that
asks for input ends the call with an error the model reads."""

from __future__ import annotations

import json
import re

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import agent_pb2
from tests.a2a_agents import serve_agent
from tests.conftest import app_settings, collect, wait_until
from tests.test_delegation import delegate, inner_kinds, progress


async def remote_lead(client, make_agent, name: str, card_url: str, description: str = "") -> str:
    return await make_agent(remote_delegates=[agent_pb2.RemoteDelegate(
        name=name, agent_card_url=card_url, description=description,
    )])


async def test_a_remote_agent_answers_a_delegated_task(client, fake_model, make_agent):
    async with serve_agent("forecaster") as agent:
        lead = await remote_lead(client, make_agent, "weather", agent.card_url, "Forecasts weather.")
        session = await client.create_session(lead, "ann")
        fake_model.responder.push(
            tool_calls_reply([delegate("r1", "weather", "tokyo tomorrow")]),
            text_reply("Sunny, I hear."),
        )
        events = await collect(client.stream_to(session.id, "Weather in Tokyo?"))
    tools = {t["function"]["name"]: t["function"] for t in fake_model.requests[0]["tools"]}
    assert "- weather: Forecasts weather." in tools["delegate"]["description"]
    assert agent.seen.tasks == ["tokyo tomorrow"]
    # The request carried the run's trace context.
    assert agent.seen.traceparents and re.fullmatch(
        r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", agent.seen.traceparents[0])
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert (result.call_id, result.output) == ("r1", "Forecast for TOKYO TOMORROW")
    forwarded = progress(events, "r1")
    assert inner_kinds(forwarded) == ["run_started", "text_delta", "text_delta", "done"]
    assert forwarded[0].agent == "weather" and forwarded[0].child_session_id == ""
    task_id = forwarded[0].child_run_id
    assert task_id and all(f.event.run_id == task_id for f in forwarded)
    assert forwarded[-1].event.done.final_response == "Forecast for TOKYO TOMORROW"
    assert events[-1].done.final_response == "Sunny, I hear."
    # The model read the artifact as the tool's result.
    tool_message = next(m for m in fake_model.requests[1]["messages"] if m["role"] == "tool")
    assert tool_message["content"] == "Forecast for TOKYO TOMORROW"


async def test_cancelling_the_parent_cancels_the_a2a_task(client, fake_model, make_agent):
    async with serve_agent("sleeper") as agent:
        lead = await remote_lead(client, make_agent, "slow", agent.card_url)
        session = await client.create_session(lead, "ann")
        fake_model.responder.push(tool_calls_reply([delegate("r1", "slow", "take your time")]))
        stream = client.stream_to(session.id, "Go")
        async for event in stream:
            if progress([event]):
                break
        await agent.seen.started.wait()
        await client.cancel(session.id, reason="no time")
        await wait_until(lambda: any(c.startswith("cancel:") for c in agent.seen.cancelled))
    messages = await client.list_messages(session.id)
    assert messages[-1].content.startswith("cancelled")


async def test_a_remote_agent_that_asks_for_input_gives_an_error_result(
    client, fake_model, make_agent
):
    async with serve_agent("asker") as agent:
        lead = await remote_lead(client, make_agent, "asker", agent.url)  # a base URL works too
        session = await client.create_session(lead, "ann")
        fake_model.responder.push(
            tool_calls_reply([delegate("r1", "asker", "book a table")]),
            text_reply("It needs a city."),
        )
        reply = await client.send_to(session.id, "Book", timeout=30)
    error = reply.response.steps[0].tool_results[0].error
    assert error == ("the A2A agent asker asked for input, which a delegated task cannot give: "
                     "Which city?")


async def test_a_pilothouse_agent_delegates_to_another_pilothouse_over_a2a(
    client, fake_model, make_agent, model_server, tool_server, tmp_path
):
    """The remote agent is Pilothouse's own A2A server (another runtime)."""
    other = await start_app(app_settings(
        model_server, tool_server, data_dir=tmp_path, a2a_listen_address="127.0.0.1:0",
    ))
    try:
        async with PilothouseClient(f"127.0.0.1:{other.port}") as remote:
            await remote.create_agent("counter", tools=["text_stats"], system_prompt="Count.")
            assert other.a2a is not None
            url = f"http://127.0.0.1:{other.a2a.http_port}/agents/counter/"
            lead = await remote_lead(client, make_agent, "counter", url)
            session = await client.create_session(lead, "ann")
            fake_model.responder.push(
                tool_calls_reply([delegate("r1", "counter", "Count the words of 'x y z'.")]),
                tool_calls_reply([("c1", "text_stats", json.dumps({"text": "x y z"}))]),
                text_reply("Three words."),
                text_reply("The other agent counted three."),
            )
            events = await collect(client.stream_to(session.id, "How many words?"))
            result = next(e.tool_result for e in events if e.HasField("tool_result"))
            assert (result.call_id, result.output) == ("r1", "Three words.")
            assert events[-1].done.final_response == "The other agent counted three."
            forwarded = progress(events, "r1")
            assert inner_kinds(forwarded)[0] == "run_started"
            assert inner_kinds(forwarded)[-1] == "done"
            # On the other side it was a run of its own, on a session of the counter.
            sessions = await remote.list_sessions("counter")
            runs = await remote.list_runs(sessions[0].id)
            assert runs[0].content == "Count the words of 'x y z'."
    finally:
        await other.stop(0)
