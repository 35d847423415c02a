"""Agents that call agents, over real gRPC streams: the `delegate` tool, a
child run on its own session whose progress shows in the parent's stream,
cancellation of the children with the parent, the depth, run and token
limits, approvals inside a child answered through the parent's session,
and the child's spans under the parent's tool span."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from google.protobuf import json_format

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError, decision
from pilothouse.client.render import EventPrinter
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import event_pb2, message_pb2, run_service_pb2 as runs_pb
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
from tests.test_tracing import exporter, one, parent_of, spans_of  # noqa: F401 - fixture


def delegate(call_id: str, agent: str, task: str) -> tuple[str, str, str]:
    return (call_id, "delegate", json.dumps({"agent": agent, "task": task}))


def progress(events, call_id: str | None = None) -> list[event_pb2.DelegationProgress]:
    """The forwarded child events of a parent stream (of one tool call)."""
    return [e.delegation for e in events if e.HasField("delegation")
            and (call_id is None or e.delegation.tool_call_id == call_id)]


def inner_kinds(forwarded: list[event_pb2.DelegationProgress]) -> list[str]:
    return [f.event.WhichOneof("event") for f in forwarded]


async def test_a_delegated_task_is_a_child_run_whose_progress_shows_in_the_parents_stream(
    client, fake_model, make_agent
):
    researcher = await make_agent(("text_stats",), description="Counts words in texts.")
    lead = await make_agent(delegates=[researcher])
    session = await client.create_session(lead, "ann")
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", researcher, "Count the words of 'a b c'.")]),
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b c"}))]),
        text_reply("The text has three words, as counted."),
        text_reply("Three words."),
    )
    events = await collect(client.stream_to(session.id, "How many words in 'a b c'?"))

    # The model saw one `delegate` tool naming the researcher and what it does.
    tools = {t["function"]["name"]: t["function"] for t in fake_model.requests[0]["tools"]}
    assert tools["delegate"]["parameters"]["properties"]["agent"]["enum"] == [researcher]
    assert "Counts words in texts." in tools["delegate"]["description"]

    forwarded = progress(events, "d1")
    assert inner_kinds(forwarded) == [
        "run_started", "tool_calls_start", "tool_result", "text_delta", "done",
    ]
    child_session, child_run = forwarded[0].child_session_id, forwarded[0].child_run_id
    assert {f.agent for f in forwarded} == {researcher}
    assert forwarded[0].event.run_started.content == "Count the words of 'a b c'."
    assert forwarded[3].event.text_delta.text == "The text has three words, as counted."  # coalesced
    assert forwarded[-1].event.done.final_response == "The text has three words, as counted."
    assert not forwarded[-1].event.done.steps  # trimmed: the child's log has them
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert (result.call_id, result.output) == ("d1", "The text has three words, as counted.")
    assert kinds(events)[-1] == "done" and events[-1].done.final_response == "Three words."
    # The forwarded events come before the call's result, in the parent's sequence.
    position = {id(e): i for i, e in enumerate(events)}
    assert max(position[id(e)] for e in events if e.HasField("delegation")) < next(
        i for i, e in enumerate(events) if e.HasField("tool_result"))

    # The child: its own session of the researcher, for the same created_by.
    child = await client.get_run(child_run)
    assert (child.parent_run_id, child.parent_session_id, child.parent_tool_call_id) == (
        events[0].run_id, session.id, "d1")
    assert child.delegation_depth == 1 and child.agent == researcher
    parent = await client.get_run(events[0].run_id)
    assert parent.parent_run_id == "" and parent.delegation_depth == 0
    record = await client.get_session(child_session)
    assert (record.agent, record.created_by) == (researcher, "ann")
    messages = await client.list_messages(child_session)
    assert (messages[0].content, messages[0].sender) == ("Count the words of 'a b c'.", lead)
    assert_valid_history(messages)
    # The CLI's plain rendering shows the child's progress indented.
    out = io.StringIO()
    printer = EventPrinter(out, color=False)
    for event in events:
        printer.print(event)
    lines = out.getvalue().splitlines()
    assert f"  ⤷ {researcher}: → text_stats({{\"text\": \"a b c\"}})" in lines
    assert f"  ⤷ {researcher}: done: text_response" in lines
    # Its whole stream is an Attach away.
    full = await collect(client.attach(child_session, child_run))
    assert "text_delta" in kinds(full) and len(full) > len(forwarded)


async def test_cancelling_the_parent_cancels_the_child(client, fake_model, make_agent):
    GATES.pop("deleg-cancel", None)
    worker = await make_agent(("wait_for_gate",))
    lead = await make_agent(delegates=[worker])
    session = await client.create_session(lead, "ann")
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", worker, "Wait for the gate.")]),
        tool_calls_reply([("w1", "wait_for_gate", json.dumps({"name": "deleg-cancel"}))]),
    )
    stream = client.stream_to(session.id, "Go")
    seen: list = []
    async for event in stream:
        seen.append(event)
        if any(f.event.HasField("tool_calls_start") for f in progress([event])):
            break
    child_session = progress(seen)[0].child_session_id
    child_run = progress(seen)[0].child_run_id
    await wait_until(lambda: "deleg-cancel" in GATES)  # the child's tool is running
    cancelled = await client.cancel(session.id, reason="enough")
    assert not cancelled.already_finished
    child = await client.get_run(child_run)
    assert child.stop_reason == event_pb2.STOP_REASON_CANCELLED
    await wait_until(lambda: "deleg-cancel" in CANCELLED_GATES)  # the child's tool RPC too
    assert_valid_history(await client.list_messages(child_session))
    parent_messages = await client.list_messages(session.id)
    assert_valid_history(parent_messages)
    assert parent_messages[-1].role == message_pb2.ROLE_TOOL
    assert parent_messages[-1].content.startswith("cancelled")
    gate("deleg-cancel").set()


async def test_the_depth_limit_stops_recursion(client, fake_model):
    name = "recursive"
    await client.create_agent(name, system_prompt="Delegate.", delegates=[name])
    session = await client.create_session(name, "ann")
    fake_model.responder.push(
        *(tool_calls_reply([delegate(f"d{depth}", name, f"level {depth + 1}")]) for depth in range(4)),
        text_reply("bottom"), text_reply("level 2 done"), text_reply("level 1 done"),
        text_reply("top done"),
    )
    reply = await client.send_to(session.id, "Go deep", timeout=60)
    assert reply.response.final_response == "top done"
    # Runs at depths 1, 2, 3; the one at depth 3 was refused a fourth level
    # and the model read why.
    tasks = [r["messages"][-1]["content"] for r in fake_model.requests[1:4]]
    assert tasks == ["level 1", "level 2", "level 3"]
    refusal = next(m for m in fake_model.requests[4]["messages"] if m["role"] == "tool")
    assert refusal["content"].startswith("cannot delegate: this run is 3 delegations deep")


async def test_approvals_inside_a_child_are_answered_through_the_parents_session(
    client, fake_model, make_agent
):
    careful = await make_agent(("delete_records",))
    lead = await make_agent(delegates=[careful])
    session = await client.create_session(lead, "ann")
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", careful, "Empty the logs table.")]),
        tool_calls_reply([("x1", "delete_records", json.dumps({"table": "logs"}))]),
        text_reply("Emptied."),
        text_reply("The logs table is empty."),
    )
    stream = client.stream_to(session.id, "Empty the logs")
    seen: list = []
    async for event in stream:
        seen.append(event)
        asked = [f for f in progress([event]) if f.event.HasField("approval_required")]
        if asked:
            request = asked[0].event.approval_required
            assert asked[0].event.session_id == asked[0].child_session_id
            assert request.tool_call.name == "delete_records"
            run_id = await client.submit_decision(session.id, decision(request.request_id, event_pb2.VERDICT_APPROVE))
            assert run_id == asked[0].child_run_id  # the parent's session passed it on
    assert seen[-1].done.final_response == "The logs table is empty."
    assert "decision_applied" in inner_kinds(progress(seen))


async def test_a_childs_question_is_answered_on_the_parents_steer_stream(
    client, fake_model, make_agent
):
    asker = await make_agent(("ask_user",))
    lead = await make_agent(delegates=[asker])
    session = await client.create_session(lead, "ann")
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", asker, "Ask which colour.")]),
        tool_calls_reply([("q1", "ask_user", json.dumps({"question": "Colour?",
                                                          "options": ["red", "blue"]}))]),
        text_reply("Blue it is."),
        text_reply("They chose blue."),
    )
    stream = await client.steer(session.id, "Pick a colour")
    seen: list = []
    async for event in stream:
        seen.append(event)
        asked = [f for f in progress([event]) if f.event.HasField("question_asked")]
        if asked:
            await stream.decide(decision(asked[0].event.question_asked.request_id,
                                         selected_options=["blue"]))
        if event.HasField("done"):
            break
    assert seen[-1].done.final_response == "They chose blue."
    child_session = progress(seen)[0].child_session_id
    answer = next(m for m in await client.list_messages(child_session) if m.name == "ask_user")
    assert json.loads(answer.content) == {"selected_options": ["blue"]}


async def test_delegates_are_validated_and_round_trip(client):
    created = await client.create_agent(
        "with-delegates", delegates=["researcher"],
        remote_delegates=[{"name": "weather", "agent_card_url": "https://weather.example/",
                           "description": "Forecasts."}],
    )
    assert list(created.config.delegates) == ["researcher"]
    assert created.config.remote_delegates[0].agent_card_url == "https://weather.example/"
    assert [t.name for t in created.tools] == ["delegate"]
    for bad, field in (
        ({"delegates": ["ok", "ok"]}, "config.delegates"),
        ({"remote_delegates": [{"name": "w", "agent_card_url": "ftp://x"}]},
         "config.remote_delegates.0.agent_card_url"),
        ({"delegates": ["w"], "remote_delegates": [{"name": "w", "agent_card_url": "http://x"}]},
         "config.remote_delegates"),
        ({"delegates": ["x"], "tools": ["delegate"]}, "config.tools"),
    ):
        with pytest.raises(PilothouseRpcError) as caught:
            await client.create_agent("bad-delegates", **bad)
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field_violations[0][0] == field, caught.value.field_violations


async def test_the_childs_spans_nest_under_the_parents_tool_span(
    client, exporter, fake_model, make_agent  # noqa: F811
):
    helper = await make_agent()
    lead = await make_agent(delegates=[helper])
    session = await client.create_session(lead, "ann")
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", helper, "Say hi.")]), text_reply("hi"), text_reply("Done."),
    )
    reply = await client.send_to(session.id, "Go", timeout=30)
    child_run = (await client.list_runs((await client.list_sessions(helper))[0].id))[0].run_id

    def finished() -> bool:
        names = [s.name for s in exporter.get_finished_spans()]
        return names.count(f"invoke_agent {lead}") >= 1 and f"invoke_agent {helper}" in names

    await wait_until(finished)
    parent_span = next(s for s in exporter.get_finished_spans()
                       if s.attributes.get("pilothouse.run.id") == reply.run_id)
    spans = spans_of(exporter, parent_span.context.trace_id)
    tool = one(spans, "execute_tool delegate")
    child = next(s for s in spans if s.attributes.get("pilothouse.run.id") == child_run)
    assert parent_of(child) == tool.context.span_id
    assert parent_of(tool) == parent_span.context.span_id
    assert tool.attributes["pilothouse.delegate.agent"] == helper
    assert tool.attributes["pilothouse.delegate.run_id"] == child_run
    assert any(s.name == "chat fake-model" and parent_of(s) == child.context.span_id for s in spans)


async def test_run_and_token_limits(fake_model, tool_server):
    app = await start_app(app_settings(fake_model, tool_server, delegation_max_runs=1))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("helper", system_prompt="Help.")
            await client.create_agent("lead", system_prompt="Lead.", delegates=["helper"])
            session = await client.create_session("lead", "ann")

            # Two delegations in one round, one allowed per run.
            fake_model.responder.push(
                tool_calls_reply([delegate("d1", "helper", "one"), delegate("d2", "helper", "two")]),
                text_reply("first answer"),
                text_reply("Only one."),
            )
            reply = await client.send_to(session.id, "Twice", timeout=30)
            results = {r.call_id: r for r in reply.response.steps[0].tool_results}
            assert results["d1"].output == "first answer"
            assert results["d2"].error == "cannot delegate: this run has delegated 1 tasks, the limit"

            # A token budget: the child gets what is left, and its tokens count.
            fake_model.responder.push(
                tool_calls_reply([delegate("d3", "helper", "spend")],
                                 usage={"prompt_tokens": 20, "completion_tokens": 10}),
                text_reply("spent", usage={"prompt_tokens": 60, "completion_tokens": 20}),
            )
            options = runs_pb.RunOptions(token_budget=100)
            events = await collect(client.stream_to(session.id, "Spend", options=options))
            done = events[-1].done
            assert done.stop_reason == event_pb2.STOP_REASON_BUDGET_EXCEEDED
            assert "delegations used 110 tokens of its budget of 100" in done.error
            result = next(e.tool_result for e in events if e.HasField("tool_result"))
            assert result.output == "spent"
            child_run = progress(events)[0].child_run_id
            child = await client.get_run(child_run)
            assert child.usage.total_tokens == 80
            assert json_format.MessageToDict(child).get("parentRunId") == events[0].run_id
    finally:
        await app.stop(0)


async def test_a_pinned_session_delegates_as_its_agent_version_says(client, fake_model, make_agent):
    researcher = await make_agent(("text_stats",), description="Counts words.")
    other = await make_agent(description="Something else.")
    lead = await make_agent(delegates=[researcher])
    await client.update_agent(lead, delegates=[other])  # version 2 no longer names the researcher
    session = await client.create_session(lead, "ann", agent_version=1)
    fake_model.responder.push(
        tool_calls_reply([delegate("d1", researcher, "Say hi.")]),
        text_reply("hi"),
        text_reply("The researcher said hi."),
    )
    events = await collect(client.stream_to(session.id, "Ask the researcher."))
    forwarded = progress(events, "d1")
    assert forwarded and {f.agent for f in forwarded} == {researcher}
    assert forwarded[-1].event.done.final_response == "hi"
    assert events[-1].done.final_response == "The researcher said hi."
