"""Guest turns over real gRPC: a message answered by another agent on the
same session (`RunOptions.agent`), the answering agent recorded in the
history, and each model seeing the other agent's answers framed."""

from __future__ import annotations

import json

import grpc
import pytest

from pilothouse.client import PilothouseRpcError
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import message_pb2, run_service_pb2 as runs_pb


def wire(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request["messages"]]


async def test_a_guest_answers_one_message_and_each_agent_knows_who_said_what(
    client, fake_model, make_agent
):
    host = await make_agent(system_prompt="You are the host.")
    guest = await make_agent(("text_stats",), system_prompt="You are the guest.")
    session = await client.create_session(host, "ann")
    fake_model.responder.push(text_reply("Hello from the host."))
    await client.send_to(session.id, "Hi", timeout=30)

    fake_model.responder.push(
        tool_calls_reply([("g1", "text_stats", json.dumps({"text": "a b"}))]),
        text_reply("Two words, says the guest."),
    )
    reply = await client.send_to(session.id, "Guest, count 'a b'", timeout=30,
                                 options=runs_pb.RunOptions(agent=guest))
    assert reply.response.final_response == "Two words, says the guest."
    assert reply.run.agent == guest
    # The guest runs with its own prompt and tools, and sees the host's
    # answer as the host's.
    request = fake_model.requests[1]
    assert wire(request)[:4] == [
        ("system", "You are the guest."),
        ("user", "Hi"),
        ("assistant", f'<from agent="{host}">\nHello from the host.\n</from>'),
        ("user", "Guest, count 'a b'"),
    ]
    assert [t["function"]["name"] for t in request["tools"]] == ["text_stats"]

    fake_model.responder.push(text_reply("Thanks, guest."))
    await client.send_to(session.id, "Host, what did the guest say?", timeout=30)
    host_view = wire(fake_model.requests[3])
    assert host_view[0] == ("system", "You are the host.")
    assert ("assistant", "Hello from the host.") in host_view  # its own answer as it was
    assert ("assistant", f'<from agent="{guest}">\nTwo words, says the guest.\n</from>') in host_view

    messages = await client.list_messages(session.id)
    answers = [(m.content, m.sender) for m in messages if m.role == message_pb2.ROLE_ASSISTANT]
    assert answers == [
        ("Hello from the host.", ""), ("", guest), ("Two words, says the guest.", guest),
        ("Thanks, guest.", ""),
    ]
    assert (await client.get_session(session.id)).agent == host  # still the host's session


async def test_the_sessions_own_agent_as_guest_is_an_ordinary_turn(client, fake_model, make_agent):
    host = await make_agent()
    session = await client.create_session(host, "ann")
    fake_model.responder.push(text_reply("Plain."))
    await client.send_to(session.id, "Hi", timeout=30, options=runs_pb.RunOptions(agent=host))
    messages = await client.list_messages(session.id)
    assert messages[-1].sender == ""


async def test_an_unknown_guest_is_not_found(client, make_agent):
    session = await client.create_session(await make_agent(), "ann")
    with pytest.raises(PilothouseRpcError) as caught:
        await client.send_to(session.id, "Hi", timeout=30,
                             options=runs_pb.RunOptions(agent="nobody-here"))
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.metadata.get("agent") == "nobody-here"
