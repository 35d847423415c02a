"""Agents, sessions, history and bad input over a real gRPC channel: status
codes with google.rpc.ErrorInfo / BadRequest details, pagination."""

from __future__ import annotations

import grpc
import pytest

from pilothouse.app.startup import StartupError, start_app
from pilothouse.client import PilothouseRpcError
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2,
    event_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
)
from tests.conftest import ToolServer, app_settings, collect


async def rpc_error(awaitable) -> PilothouseRpcError:
    with pytest.raises(PilothouseRpcError) as error:
        await awaitable
    return error.value


async def test_create_get_list_delete_agent(client, make_agent):
    name = await make_agent(("calculate", "current_time"), description="maths", tool_choice="required")

    agent = await client.get_agent(name)
    assert agent.config.name == name
    assert agent.config.max_iterations == 16  # the default
    assert agent.config.model == "fake-model"  # the server's default model
    assert agent.config.tool_choice == "required"
    assert agent.source == "api"
    assert [t.name for t in agent.tools] == ["calculate", "current_time"]
    assert '"expression"' in agent.tools[0].parameters_json_schema

    names = [a.config.name for a in await client.list_agents()]
    assert name in names and "assistant" in names
    assert names == sorted(names)

    await client.delete_agent(name)
    error = await rpc_error(client.get_agent(name))
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert (error.reason, error.metadata) == ("AGENT_NOT_FOUND", {"agent": name})


async def test_agents_from_the_default_file_are_loaded(client):
    agent = await client.get_agent("assistant")
    assert agent.source == "file"
    assert list(agent.config.tools) == ["current_time", "calculate", "json_query", "text_stats"]


async def test_list_agents_paginates_alphabetically(client, make_agent):
    for name in ("zz-page-c", "zz-page-a", "zz-page-b"):
        await make_agent(name=name)
    all_names = [a.config.name for a in await client.list_agents()]
    pages, token = [], ""
    while True:
        reply = await client.agents.ListAgents(
            agent_service_pb2.ListAgentsRequest(page_size=2, page_token=token), timeout=5
        )
        assert len(reply.agents) <= 2
        pages.append([a.config.name for a in reply.agents])
        token = reply.next_page_token
        if not token:
            break
    assert [n for page in pages for n in page] == all_names
    assert all_names[-3:] == ["zz-page-a", "zz-page-b", "zz-page-c"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (agent_pb2.AgentConfig(name=""), "config.name"),
        (agent_pb2.AgentConfig(name="9lives"), "config.name"),
        (agent_pb2.AgentConfig(name="has space"), "config.name"),
        (agent_pb2.AgentConfig(name="ok", max_iterations=1000), "config.max_iterations"),
        (agent_pb2.AgentConfig(name="ok", tool_choice="sometimes"), "config.tool_choice"),
        (agent_pb2.AgentConfig(name="ok", tools=["calculate", "calculate"]), "config.tools"),
    ],
)
async def test_create_agent_rejects_bad_configs(client, config, field):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.agents.CreateAgent(agent_service_pb2.CreateAgentRequest(config=config), timeout=5)
    wrapped = PilothouseRpcError(error.value)
    assert wrapped.code is grpc.StatusCode.INVALID_ARGUMENT
    assert wrapped.reason == "INVALID_AGENT_CONFIG"  # specific, not the code again
    assert [f for f, _ in wrapped.field_violations] == [field]


async def test_create_agent_with_unknown_tool_fails_precondition(client):
    error = await rpc_error(client.create_agent("toolless", tools=["launch_rockets"]))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "TOOL_NOT_AVAILABLE"
    assert error.metadata["tools"] == "launch_rockets"


async def test_create_agent_twice_already_exists(client, make_agent):
    name = await make_agent()
    error = await rpc_error(client.create_agent(name))
    assert error.code is grpc.StatusCode.ALREADY_EXISTS


async def test_sessions_get_or_create_list_and_close(client, fake_model, make_agent):
    agent = await make_agent()
    created = await client.create_session(agent, "carol")
    assert created.state == session_pb2.SESSION_STATE_OPEN
    assert (created.agent, created.created_by, created.message_count) == (agent, "carol", 0)

    same = await client.get_or_create_session(agent, "carol")
    assert same.id == created.id
    reply = await client.sessions.GetOrCreateSession(
        session_service_pb2.GetOrCreateSessionRequest(agent=agent, created_by="dave"), timeout=5
    )
    assert reply.created and reply.session.id != created.id

    listed = await client.list_sessions(agent=agent)
    assert [s.id for s in listed] == [reply.session.id, created.id]  # newest first
    assert [s.id for s in await client.list_sessions(agent=agent, created_by="carol")] == [created.id]
    first_page = await client.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(agent=agent, page_size=1), timeout=5
    )
    assert len(first_page.sessions) == 1 and first_page.next_page_token
    # A token is bound to its filters.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(agent="other", page_token=first_page.next_page_token),
            timeout=5,
        )
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    closed = await client.close_session(created.id)
    assert closed.state == session_pb2.SESSION_STATE_CLOSED
    assert (await client.close_session(created.id)).state == session_pb2.SESSION_STATE_CLOSED
    error = await rpc_error(client.send_to(created.id, "hello?", timeout=5))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "SESSION_CLOSED"
    # After closing, get-or-create opens a fresh session.
    fresh = await client.get_or_create_session(agent, "carol")
    assert fresh.id != created.id


async def test_list_messages_paginates(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", '{"text": "a"}'), ("c2", "text_stats", '{"text": "b"}')]),
        text_reply("Done."),
    )
    await client.send_to(session_id, "count", timeout=30)
    everything = await client.list_messages(session_id)
    assert len(everything) == 5
    pages, token = [], ""
    while True:
        reply = await client.sessions.ListMessages(
            session_service_pb2.ListMessagesRequest(session_id=session_id, page_size=2, page_token=token),
            timeout=5,
        )
        pages.append(len(reply.messages))
        token = reply.next_page_token
        if not token:
            break
    assert pages == [2, 2, 1]


async def test_unknown_session_is_not_found_on_every_run_method(client):
    for call in (
        client.send_to("nope", "hi", timeout=5),
        collect(client.stream_to("nope", "hi")),
        client.get_session("nope"),
        client.list_messages("nope"),
        client.close_session("nope"),
    ):
        error = await rpc_error(call)
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert (error.reason, error.metadata) == ("SESSION_NOT_FOUND", {"session_id": "nope"})

    stream = await client.steer("nope", "hi")
    error = await rpc_error(collect(stream))
    assert error.code is grpc.StatusCode.NOT_FOUND


async def test_unknown_agent_is_not_found(client):
    for call in (client.create_session("ghost"), client.get_or_create_session("ghost")):
        error = await rpc_error(call)
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.metadata == {"agent": "ghost"}


async def test_agent_deleted_under_a_session_is_not_found_on_run(client, make_agent):
    agent = await make_agent()
    session = await client.create_session(agent)
    await client.delete_agent(agent)
    error = await rpc_error(client.send_to(session.id, "hi", timeout=5))
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "AGENT_NOT_FOUND"


async def test_bad_input_is_invalid_argument_with_the_field(client, app, session_of):
    session_id = await session_of()
    cases = [
        (client.send_to(session_id, "   ", timeout=5), "content"),
        (client.send_to("", "hi", timeout=5), "session_id"),
        (client.send_to(session_id, "x" * (app.runtime.limits.max_content_bytes + 1), timeout=5), "content"),
        (client.get_agent(""), "name"),
        (client.create_session(""), "agent"),
        (client.list_sessions(page_size=-1), "page_size"),
        (client.list_messages(session_id, page_size=-5), "page_size"),
    ]
    for call, field in cases:
        error = await rpc_error(call)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, field
        assert [f for f, _ in error.field_violations] == [field]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.agents.ListAgents(agent_service_pb2.ListAgentsRequest(page_token="garbage!"), timeout=5)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # Nothing was stored by the rejected runs.
    assert await client.list_messages(session_id) == []


async def test_steer_must_start_with_start(client, session_of):
    session_id = await session_of()
    call = client.runs.Steer(timeout=5)
    await call.write(run_service_pb2.SteerRequest(steer=run_service_pb2.SteerInput(content="hi")))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await client.list_messages(session_id) == []


async def test_executor_down_gives_the_model_an_error_result(fake_model):
    """A ToolExecutor that goes away mid-life: the call fails with an error
    result naming it, and the run goes on to the model's answer."""
    from pilothouse.client import PilothouseClient
    from pilothouse.toolexecutor.service import serve_tools
    from tests.conftest import build_test_tools

    tools = await serve_tools(build_test_tools(), "127.0.0.1:0")
    app = await start_app(
        app_settings(fake_model, ToolServer(tools, f"127.0.0.1:{tools.port}"), tool_timeout=5.0)
    )
    try:
        await tools.server.stop(0)  # the executor is gone
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            agent = await client.create_agent("down-agent", tools=["text_stats"])
            session = await client.create_session(agent.config.name)
            fake_model.responder.push(
                tool_calls_reply([("c1", "text_stats", '{"text": "a"}')]), text_reply("No tools today.")
            )
            events = await collect(client.stream_to(session.id, "count"))
    finally:
        await app.stop(0)
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.WhichOneof("outcome") == "error"
    assert "unavailable" in result.error
    assert f"127.0.0.1:{tools.port}" in result.error
    assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert "unavailable" in fake_model.requests[-1]["messages"][-1]["content"]


async def test_startup_fails_for_an_agents_file_naming_a_missing_tool(fake_model, tool_server, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[[agents]]\nname = "x"\ntools = ["teleport"]\n')
    with pytest.raises(StartupError, match="teleport"):
        await start_app(app_settings(fake_model, tool_server, agents_file=agents))
    agents.write_text('[[agents]]\nname = "1bad"\n')
    with pytest.raises(StartupError, match=r"agents\[0\]\.name"):
        await start_app(app_settings(fake_model, tool_server, agents_file=agents))


async def test_delete_session_state_filter_and_newest_first(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(text_reply("one"), text_reply("two"))
    await client.send_to(session_id, "first", timeout=30)
    await client.send_to(session_id, "second", timeout=30)
    newest = await client.sessions.ListMessages(
        session_service_pb2.ListMessagesRequest(session_id=session_id, newest_first=True, page_size=3),
        timeout=5,
    )
    assert [m.content for m in newest.messages] == ["two", "second", "one"]
    agent = (await client.get_session(session_id)).agent
    other = await client.create_session(agent, "filter")
    await client.close_session(other.id)
    closed = await client.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(agent=agent, state=session_pb2.SESSION_STATE_CLOSED),
        timeout=5,
    )
    assert [s.id for s in closed.sessions] == [other.id]

    await client.delete_session(session_id)
    error = await rpc_error(client.get_session(session_id))
    assert error.code is grpc.StatusCode.NOT_FOUND
    error = await rpc_error(client.delete_session(session_id))
    assert error.code is grpc.StatusCode.NOT_FOUND
