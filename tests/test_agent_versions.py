"""Agents that live, over real gRPC channels on real ports, on a SQLite
file and on a real PostgreSQL server: UpdateAgent with field masks makes
versions, ListAgentVersions pages them, a run keeps the version it started
with, a session may pin one, and an agent deleted and created again does
not take over the old agent's sessions (AGENT_REPLACED until an admin
rebinds them). What the model was sent is read from the fake model's
request log."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.client.errors import PilothouseError, error_from_rpc
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    session_pb2,
    session_service_pb2 as sessions_pb,
)
from tests.conftest import GATES, app_settings, collect, gate, wait_until
from tests.pg import PgServer, pg_server  # noqa: F401 - fixture
from tests.test_auth import tokens_file

_names = itertools.count(1)


@pytest_asyncio.fixture(loop_scope="session", scope="module", params=["sqlite", "postgres"])
async def served(request, model_server, tool_server, tmp_path_factory) -> AsyncIterator[PilothouseClient]:
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        url = await pg.new_database()
    else:
        url = "sqlite:///versions.db"
    app = await start_app(app_settings(model_server, tool_server, store_url=url,
                                       data_dir=tmp_path_factory.mktemp("versions")))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            yield client
    finally:
        await app.stop(0)


def system_prompt(request: dict) -> str:
    first = request["messages"][0]
    return first["content"] if first["role"] == "system" else ""


async def failure(call) -> PilothouseError:
    """The SDK error of a failed call (of the SDK or of a raw stub)."""
    with pytest.raises((PilothouseError, grpc.aio.AioRpcError)) as caught:
        await call
    error = caught.value
    if isinstance(error, grpc.aio.AioRpcError):
        error = error_from_rpc(error)
    assert error.domain == "pilothouse.v1", error
    return error


async def new_agent(client: PilothouseClient, **config) -> str:
    name = f"living-{next(_names)}"
    await client.create_agent(name, system_prompt=config.pop("system_prompt", "one"), **config)
    return name


# --- UpdateAgent and ListAgentVersions --------------------------------------------


async def test_an_update_makes_a_version_and_every_version_is_kept(served, fake_model) -> None:
    name = await new_agent(served, model="fake-model", tools=["text_stats"])
    second = await served.update_agent(name, system_prompt="two")
    assert (second.version, second.config.system_prompt, second.config.model) == (2, "two", "fake-model")
    assert list(second.config.tools) == ["text_stats"]  # not in the mask: kept
    third = await served.update_agent(name, tools=[])  # an explicit mask clears a field
    assert third.version == 3 and list(third.config.tools) == []
    assert third.uid == second.uid and third.state == agent_pb2.AGENT_STATE_ACTIVE
    same = await served.update_agent(name, tools=[])
    assert same.version == 3  # unchanged: no new version

    versions = await served.list_agent_versions(name)
    assert [(v.version, v.config.system_prompt) for v in versions] == [(3, "two"), (2, "two"), (1, "one")]
    assert versions[-1].update_time.ToNanoseconds() < versions[0].update_time.ToNanoseconds()
    paged = await served.agents.ListAgentVersions(agents_pb.ListAgentVersionsRequest(name=name, page_size=2))
    assert [v.version for v in paged.agents] == [3, 2] and paged.next_page_token
    rest = await served.agents.ListAgentVersions(agents_pb.ListAgentVersionsRequest(
        name=name, page_size=2, page_token=paged.next_page_token))
    assert [v.version for v in rest.agents] == [1] and rest.next_page_token == ""
    assert (await served.get_agent(name, version=1)).config.system_prompt == "one"
    assert (await served.get_agent(name)).version == 3

    error = await failure(served.get_agent(name, version=9))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_VERSION_NOT_FOUND")
    error = await failure(served.list_agent_versions("no-such-agent"))
    assert error.reason == "AGENT_NOT_FOUND"
    other = await failure(served.agents.ListAgentVersions(agents_pb.ListAgentVersionsRequest(
        name=await new_agent(served), page_token=paged.next_page_token)))
    assert other.code == grpc.StatusCode.INVALID_ARGUMENT  # a token of another agent


async def test_update_masks_follow_aip_134(served) -> None:
    name = await new_agent(served, model="fake-model", tools=["text_stats"], description="d")

    def update(mask: list[str] | None, **config):
        return served.agents.UpdateAgent(agents_pb.UpdateAgentRequest(
            agent=agent_pb2.Agent(config=agent_pb2.AgentConfig(name=name, **config)),
            update_mask=field_mask_pb2.FieldMask(paths=mask) if mask is not None else None,
        ))

    # An empty mask: the fields that are set.
    implied = (await update(None, system_prompt="implied", temperature=0.0)).agent
    assert (implied.config.system_prompt, implied.config.model, implied.config.description) == (
        "implied", "fake-model", "d")
    assert implied.config.HasField("temperature") and implied.config.temperature == 0.0
    # `*` and `config`: the whole config, unset fields back to their defaults.
    whole = (await update(["*"], system_prompt="whole")).agent
    assert (whole.config.system_prompt, whole.config.description, list(whole.config.tools)) == (
        "whole", "", [])
    assert not whole.config.HasField("temperature")
    assert (await update(["config"], description="again")).agent.config.description == "again"

    for path in ("config.nope", "version", "tools", "config.name", "config.remote_delegates.name"):
        error = await failure(update([path], system_prompt="x"))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")
        assert [v.field for v in error.field_violations] == ["update_mask"], path
    error = await failure(update(["*", "config.model"], model="x"))
    assert error.reason == "INVALID_UPDATE_MASK"
    error = await failure(update(["config.temperature"], temperature=5.0))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    error = await failure(update(["config.tools"], tools=["no_such_tool"]))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TOOL_NOT_AVAILABLE")
    error = await failure(served.update_agent("no-such-agent", system_prompt="x"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    for bad in ("x" * 10_000, "é" * 100, "-leading"):  # the fault suite's: NOT_FOUND before
        error = await failure(served.update_agent(bad, system_prompt="x"))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, bad[:10]
        assert [v.field for v in error.field_violations] == ["agent.config.name"]
    assert [v.version for v in await served.list_agent_versions(name)] == [4, 3, 2, 1]


# --- a run keeps its version, a session may pin one --------------------------------


async def test_a_run_keeps_the_version_it_started_with(served, fake_model) -> None:
    name = await new_agent(served, system_prompt="prompt one", tools=["wait_for_gate"])
    session = await served.create_session(name, "keeper")
    held = f"versions-{name}"
    fake_model.responder.push(
        tool_calls_reply([("c1", "wait_for_gate", json.dumps({"name": held}))]),
        text_reply("answered on version one"),
    )
    stream = served.stream_to(session.id, "wait for the gate")
    events = []
    async for event in stream:
        events.append(event)
        if event.HasField("tool_calls_start"):
            break
    await wait_until(lambda: held in GATES)
    updated = await served.update_agent(name, system_prompt="prompt two")
    assert updated.version == 2
    gate(held).set()
    events += await collect(stream)
    assert events[-1].done.final_response == "answered on version one"
    assert [system_prompt(r) for r in fake_model.requests] == ["prompt one", "prompt one"]
    assert (await served.get_run(events[0].run_id)).agent_version == 1

    fake_model.responder.push(text_reply("answered on version two"))
    reply = await served.send_to(session.id, "again")
    assert system_prompt(fake_model.requests[-1]) == "prompt two"
    assert (await served.get_run(reply.run_id, session.id)).agent_version == 2


async def test_a_session_pins_a_version(served, fake_model) -> None:
    name = await new_agent(served, system_prompt="first")
    await served.update_agent(name, system_prompt="second")
    pinned = await served.create_session(name, "pinner", agent_version=1)
    follows = await served.create_session(name, "follower")
    assert (pinned.agent_version, follows.agent_version) == (1, 0)
    assert pinned.agent_uid == follows.agent_uid == (await served.get_agent(name)).uid
    fake_model.responder.push(text_reply("a"), text_reply("b"))
    await served.send_to(pinned.id, "hello")
    await served.send_to(follows.id, "hello")
    assert [system_prompt(r) for r in fake_model.requests] == ["first", "second"]

    unpinned = await served.update_session(pinned.id, agent_version=0)
    assert unpinned.agent_version == 0
    fake_model.responder.push(text_reply("c"))
    await served.send_to(pinned.id, "and now?")
    assert system_prompt(fake_model.requests[-1]) == "second"
    repinned = await served.update_session(pinned.id, agent_version=1, title="Pinned")
    assert (repinned.agent_version, repinned.title) == (1, "Pinned")
    assert (await served.get_session(pinned.id)).agent_version == 1

    error = await failure(served.create_session(name, "pinner", agent_version=7))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_VERSION_NOT_FOUND")
    error = await failure(served.update_session(pinned.id, agent_version=7))
    assert error.reason == "AGENT_VERSION_NOT_FOUND"
    error = await failure(served.sessions.UpdateSession(sessions_pb.UpdateSessionRequest(
        session=session_pb2.Session(id=pinned.id, agent="other"),
        update_mask=field_mask_pb2.FieldMask(paths=["agent"]))))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")


# --- no silent takeover ----------------------------------------------------------


async def test_compacting_a_pinned_session_uses_its_version(served, fake_model) -> None:
    name = await new_agent(served, model="model-one")
    await served.update_agent(name, model="model-two")
    pinned = await served.create_session(name, "pinner", agent_version=1)
    fake_model.responder.push(text_reply("an answer"), text_reply("a summary"))
    await served.send_to(pinned.id, "hello")
    reply = await served.compact_session(pinned.id)
    assert reply.summary == "a summary"
    assert [r["model"] for r in fake_model.requests] == ["model-one", "model-one"]


async def test_an_agent_created_again_does_not_take_over_old_sessions(served, fake_model) -> None:
    name = await new_agent(served, system_prompt="the old prompt")
    old = await served.create_session(name, "veteran")
    fake_model.responder.push(text_reply("old answer"))
    await served.send_to(old.id, "hello")
    first_uid = (await served.get_agent(name)).uid

    error = await failure(served.create_agent(name, system_prompt="a takeover"))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "AGENT_EXISTS")
    await served.delete_agent(name)
    error = await failure(served.send_to(old.id, "still there?"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    again = await served.create_agent(name, system_prompt="the new prompt")
    assert again.uid != first_uid and again.version == 1

    error = await failure(served.send_to(old.id, "who are you now?"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_REPLACED")
    assert error.metadata == {"agent": name, "session_id": old.id}
    error = await failure(served.update_session(old.id, agent_version=1))
    assert error.reason == "AGENT_REPLACED"
    assert len(await served.list_messages(old.id)) == 2  # nothing was appended
    # GetOrCreateSession does not hand out the replaced agent's session.
    got = await served.get_or_create_session(name, "veteran")
    assert got.id != old.id and got.agent_uid == again.uid
    assert (await served.get_or_create_session(name, "veteran")).id == got.id

    fresh = await served.create_session(name, "newcomer")
    fake_model.responder.push(text_reply("new answer"))
    await served.send_to(fresh.id, "hello")
    assert system_prompt(fake_model.requests[-1]) == "the new prompt"

    rebound = await served.rebind_session(old.id)
    assert (rebound.agent_uid, rebound.agent_version) == (again.uid, 0)
    fake_model.responder.push(text_reply("rebound answer"))
    await served.send_to(old.id, "and now?")
    assert system_prompt(fake_model.requests[-1]) == "the new prompt"
    assert [system_prompt(r) for r in fake_model.requests] == [
        "the old prompt", "the new prompt", "the new prompt"]


async def test_only_admins_update_agents_and_rebind_sessions(model_server, tool_server, tmp_path, fake_model) -> None:
    path = tokens_file(tmp_path / "tokens.toml", {
        "root-secret": ("root", ["admin"]), "bob-secret": ("bob", [])})
    app = await start_app(app_settings(model_server, tool_server, auth=["tokens"],
                                       auth_tokens_file=path))
    try:
        async with (
            PilothouseClient(f"127.0.0.1:{app.port}", token="root-secret") as root,
            PilothouseClient(f"127.0.0.1:{app.port}", token="bob-secret") as bob,
        ):
            name = await new_agent(root)
            assert (await root.get_agent(name)).creator == "root"
            session = await bob.create_session(name)
            error = await failure(bob.update_agent(name, system_prompt="mine now"))
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            error = await failure(bob.rebind_session(session.id))
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            assert (await bob.update_session(session.id, agent_version=1)).agent_version == 1
            assert (await root.update_agent(name, system_prompt="two")).version == 2
            assert (await root.rebind_session(session.id, 2)).agent_version == 2
            assert [v.version for v in await bob.list_agent_versions(name)] == [2, 1]
            alice_session = await root.create_session(name, "alice")
            error = await failure(bob.update_session(alice_session.id, agent_version=1))
            assert error.code == grpc.StatusCode.NOT_FOUND  # another's session: no existence leak
    finally:
        await app.stop(0)

