"""A2A: every agent served as an A2A agent, driven by the a2a-sdk's own
client over real HTTP (JSON-RPC) and real gRPC, against a running runtime
with the fake model and the reference ToolExecutor. Nothing is mocked;
timing is controlled with the fake model's `Pause` and the
`wait_for_gate` tool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from a2a.client import ClientConfig, ClientFactory
from a2a.helpers import new_data_part, new_text_message
from a2a.types import a2a_pb2 as pb
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import (
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf import json_format

from pilothouse.app.startup import App, start_app
from pilothouse.client import PilothouseClient
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from tests.conftest import (
    CANCELLED_GATES,
    GATES,
    AgentFactory,
    app_settings,
    assert_valid_history,
    wait_until,
)

TRANSPORTS = [TransportProtocol.JSONRPC.value, TransportProtocol.GRPC.value]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def a2a_app(model_server, tool_server, tmp_path_factory) -> AsyncIterator[App]:
    """The runtime with both A2A bindings on, on the SQLite store."""
    app = await start_app(
        app_settings(
            model_server, tool_server, store_url="sqlite:///sessions.db",
            data_dir=tmp_path_factory.mktemp("a2a"),
            a2a_listen_address="127.0.0.1:0", a2a_grpc=True,
        )
    )
    yield app
    await app.stop(0)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pilothouse(a2a_app: App) -> AsyncIterator[PilothouseClient]:
    async with PilothouseClient(f"127.0.0.1:{a2a_app.port}") as client:
        yield client


@pytest.fixture
def make_agent(pilothouse: PilothouseClient) -> AgentFactory:
    return AgentFactory(pilothouse)


def base_url(app: App) -> str:
    assert app.a2a is not None
    return f"http://127.0.0.1:{app.a2a.http_port}"


async def connect(app: App, agent: str, transport: str = "JSONRPC", *, streaming: bool = True):
    """The a2a-sdk client for `agent`, from its card."""
    config = ClientConfig(
        streaming=streaming,
        supported_protocol_bindings=[transport],
        grpc_channel_factory=grpc.aio.insecure_channel,
    )
    return await ClientFactory(config).create_from_url(f"{base_url(app)}/agents/{agent}/")


def user(text: str, *, task_id: str = "", context_id: str = "") -> pb.SendMessageRequest:
    message = new_text_message(text, role=pb.ROLE_USER, task_id=task_id or None,
                               context_id=context_id or None)
    return pb.SendMessageRequest(message=message)


def data_of(message: pb.Message) -> dict:
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            return json_format.MessageToDict(part.data)
    return {}


def text_from(events: list[pb.StreamResponse]) -> str:
    """The response text the artifact updates spell (append semantics)."""
    artifacts: dict[str, str] = {}
    for event in events:
        if event.HasField("task"):
            for artifact in event.task.artifacts:
                artifacts[artifact.artifact_id] = "".join(p.text for p in artifact.parts)
        if event.HasField("artifact_update"):
            update = event.artifact_update
            chunk = "".join(p.text for p in update.artifact.parts)
            key = update.artifact.artifact_id
            artifacts[key] = (artifacts.get(key, "") + chunk) if update.append else chunk
    return "".join(artifacts.values())


def states(events: list[pb.StreamResponse]) -> list[int]:
    out = []
    for event in events:
        if event.HasField("task"):
            out.append(event.task.status.state)
        elif event.HasField("status_update"):
            out.append(event.status_update.status.state)
    return out


async def collect(stream) -> list[pb.StreamResponse]:
    return [event async for event in stream]


# --- cards ---------------------------------------------------------------------------


async def test_agent_card_per_agent(a2a_app, make_agent):
    name = await make_agent(("calculate", "delete_records"), description="Does sums, carefully.")
    async with httpx.AsyncClient(base_url=base_url(a2a_app)) as http:
        card = (await http.get(f"/agents/{name}/.well-known/agent-card.json")).json()
        missing = await http.get("/agents/no-such-agent/.well-known/agent-card.json")
        listed = (await http.get("/agents/")).json()
    assert card["name"] == name and card["description"] == "Does sums, carefully."
    assert card["capabilities"]["streaming"] is True
    interfaces = {i["protocolBinding"]: i for i in card["supportedInterfaces"]}
    assert interfaces["JSONRPC"]["url"] == f"{base_url(a2a_app)}/agents/{name}/"
    assert interfaces["GRPC"]["url"] == a2a_app.runtime.address
    assert interfaces["GRPC"]["tenant"] == name
    skills = {s["name"]: s for s in card["skills"]}
    assert skills[name]["description"] == "Does sums, carefully."
    assert "calculate" in skills and "requires-approval" in skills["delete_records"]["tags"]
    assert missing.status_code == 404
    assert {"name": name, "description": "Does sums, carefully.",
            "url": f"{base_url(a2a_app)}/agents/{name}/",
            "card": f"{base_url(a2a_app)}/agents/{name}/.well-known/agent-card.json"} in listed["agents"]


# --- a conversation with a tool call ----------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_conversation_with_a_tool_call(a2a_app, pilothouse, fake_model, make_agent, transport):
    agent = await make_agent(("calculate",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "calculate", json.dumps({"expression": "17 * 23"}))]),
        text_reply("17 * 23 is 391."),
        text_reply("Then 395."),
    )
    async with await connect(a2a_app, agent, transport) as client:
        events = await collect(client.send_message(user("What is 17 * 23?")))
        first = events[0]
        assert first.HasField("task")
        task_id, context_id = first.task.id, first.task.context_id
        assert states(events)[-1] == pb.TASK_STATE_COMPLETED
        statuses = [e.status_update for e in events if e.HasField("status_update")]
        calls = [data_of(s.status.message) for s in statuses if "toolCalls" in data_of(s.status.message)]
        results = [data_of(s.status.message) for s in statuses if "toolResult" in data_of(s.status.message)]
        assert calls == [{"toolCalls": [{"id": "c1", "name": "calculate",
                                         "arguments": {"expression": "17 * 23"}}]}]
        assert results[0]["toolResult"]["output"] == "391" and results[0]["toolResult"]["name"] == "calculate"
        updates = [e.artifact_update for e in events if e.HasField("artifact_update")]
        assert updates[0].append is False and all(u.append for u in updates[1:])
        assert updates[-1].last_chunk
        assert text_from(events) == "17 * 23 is 391."
        sequences = [json_format.MessageToDict(e.status_update.metadata)["pilothouse"]["sequence"]
                     for e in events if e.HasField("status_update")]
        assert sequences == sorted(sequences)

        task = await client.get_task(pb.GetTaskRequest(id=task_id))
        assert task.status.state == pb.TASK_STATE_COMPLETED
        assert "".join(p.text for a in task.artifacts for p in a.parts) == "17 * 23 is 391."
        assert task.history[0].role == pb.ROLE_USER and task.history[0].parts[0].text == "What is 17 * 23?"

        # The next message in the same context is a new task on the same session.
        again = await collect(client.send_message(user("Plus 4?", context_id=context_id)))
        assert again[0].task.context_id == context_id and again[0].task.id != task_id
        assert text_from(again) == "Then 395."

    session = await pilothouse.get_session(context_id)
    assert session.agent == agent and session.created_by == "a2a"
    messages = await pilothouse.list_messages(context_id)
    assert [m.content for m in messages if m.content] == [
        "What is 17 * 23?", "391", "17 * 23 is 391.", "Plus 4?", "Then 395."
    ]
    assert_valid_history(messages)


async def test_send_message_without_streaming_waits_for_the_answer(a2a_app, fake_model, make_agent):
    agent = await make_agent()
    fake_model.responder.push(text_reply("Hello there."))
    async with await connect(a2a_app, agent, streaming=False) as client:
        [response] = await collect(client.send_message(user("Hi")))
    assert response.task.status.state == pb.TASK_STATE_COMPLETED
    assert text_from([response]) == "Hello there."


# --- cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_stops_the_run_and_its_tool_call(a2a_app, pilothouse, fake_model, make_agent, transport):
    agent = await make_agent(("wait_for_gate",))
    name = f"a2a-cancel-{transport}"
    fake_model.responder.push(tool_calls_reply([("g1", "wait_for_gate", json.dumps({"name": name}))]))
    async with await connect(a2a_app, agent, transport) as client:
        stream = client.send_message(user("Wait for the gate"))
        seen: list[pb.StreamResponse] = []
        async for event in stream:
            seen.append(event)
            if event.HasField("status_update") and "toolCalls" in data_of(event.status_update.status.message):
                break
        task_id, context_id = seen[0].task.id, seen[0].task.context_id
        await wait_until(lambda: name in GATES)  # the tool is running in the ToolExecutor
        cancelled = await client.cancel_task(pb.CancelTaskRequest(id=task_id))
        assert cancelled.status.state == pb.TASK_STATE_CANCELED
        rest = await collect(stream)
        assert states(rest)[-1] == pb.TASK_STATE_CANCELED
        assert name in CANCELLED_GATES  # the ToolExecutor saw its call cancelled
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(pb.CancelTaskRequest(id=task_id))
    messages = await pilothouse.list_messages(context_id)
    assert_valid_history(messages)
    assert "cancelled" in messages[-1].content


# --- approvals and questions through INPUT_REQUIRED ---------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_approval_answered_through_input_required(a2a_app, fake_model, make_agent, transport):
    agent = await make_agent(("delete_records",))
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", json.dumps({"table": "users"}))]),
        text_reply("Done: users emptied."),
    )
    async with await connect(a2a_app, agent, transport) as client:
        first = await collect(client.send_message(user("Empty the users table")))
        assert states(first)[-1] == pb.TASK_STATE_INPUT_REQUIRED  # the stream ends there
        asked = data_of(first[-1].status_update.status.message)["approvalRequired"]
        assert asked["toolCall"]["name"] == "delete_records"
        task_id = first[0].task.id
        task = await client.get_task(pb.GetTaskRequest(id=task_id))
        assert task.status.state == pb.TASK_STATE_INPUT_REQUIRED

        second = await collect(client.send_message(user("approve", task_id=task_id)))
        assert second[0].task.id == task_id
        results = [data_of(e.status_update.status.message) for e in second
                   if e.HasField("status_update") and "toolResult" in data_of(e.status_update.status.message)]
        assert results[0]["toolResult"]["output"] == "deleted all records of users"
        assert states(second)[-1] == pb.TASK_STATE_COMPLETED
        assert text_from(second) == "Done: users emptied."


async def test_denial_as_a_data_part_reaches_the_model(a2a_app, fake_model, make_agent):
    agent = await make_agent(("delete_records",))
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", json.dumps({"table": "orders"}))]),
        text_reply("I left the orders alone."),
    )
    async with await connect(a2a_app, agent) as client:
        first = await collect(client.send_message(user("Empty the orders table")))
        task_id = first[0].task.id
        answer = pb.Message(message_id="deny-1", role=pb.ROLE_USER, task_id=task_id,
                            parts=[new_data_part({"verdict": "deny", "reason": "orders are kept"})])
        second = await collect(client.send_message(pb.SendMessageRequest(message=answer)))
    assert states(second)[-1] == pb.TASK_STATE_COMPLETED
    tool_message = fake_model.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and "orders are kept" in tool_message["content"]


async def test_question_answered_with_an_option(a2a_app, fake_model, make_agent):
    agent = await make_agent(("confirm",))
    fake_model.responder.push(
        tool_calls_reply([("q1", "confirm", json.dumps({"action": "ship it"}))]),
        text_reply("Shipped."),
    )
    async with await connect(a2a_app, agent) as client:
        first = await collect(client.send_message(user("Ship it")))
        asked = data_of(first[-1].status_update.status.message)["questionAsked"]
        assert asked["question"] == "Really ship it?" and asked["options"] == ["yes", "no"]
        second = await collect(client.send_message(user("Yes", task_id=first[0].task.id)))
    results = [data_of(e.status_update.status.message)["toolResult"] for e in second
               if e.HasField("status_update") and "toolResult" in data_of(e.status_update.status.message)]
    assert results[0]["output"] == "ship it: done"
    assert states(second)[-1] == pb.TASK_STATE_COMPLETED


# --- re-subscription ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resubscribe_after_dropping_the_stream(a2a_app, fake_model, make_agent, transport):
    agent = await make_agent()
    release = asyncio.Event()
    answer = "The quick brown fox jumps over the lazy dog."
    full = text_reply(answer, chunk_size=4).events
    fake_model.responder.push(SSEReply([*full[:4], Pause(release), *full[4:]]))
    async with await connect(a2a_app, agent, transport) as client:
        stream = client.send_message(user("Tell me about the fox"))
        seen: list[pb.StreamResponse] = []
        async for event in stream:
            seen.append(event)
            if event.HasField("artifact_update"):
                break
        await stream.aclose()  # the caller goes away mid-answer
        task_id = seen[0].task.id
        run = a2a_app.runtime.scheduler.local(task_id)
        assert run is not None and not run.finished  # the run did not stop with its stream

        resumed = client.subscribe(pb.SubscribeToTaskRequest(id=task_id))
        snapshot = await anext(resumed)
        assert snapshot.HasField("task") and snapshot.task.status.state == pb.TASK_STATE_WORKING
        release.set()
        rest = await collect(resumed)
    text = text_from([snapshot, *rest])
    assert text == answer  # no gap, no duplicate
    assert text_from(seen) == answer[: len(text_from(seen))]
    assert states(rest)[-1] == pb.TASK_STATE_COMPLETED


async def test_subscribe_stays_through_input_required(a2a_app, fake_model, make_agent):
    agent = await make_agent(("delete_records",))
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", json.dumps({"table": "logs"}))]),
        text_reply("Logs gone."),
    )
    async with await connect(a2a_app, agent) as client:
        first = await collect(client.send_message(user("Empty the logs table")))
        task_id = first[0].task.id
        watcher = client.subscribe(pb.SubscribeToTaskRequest(id=task_id))
        snapshot = await anext(watcher)
        assert snapshot.task.status.state == pb.TASK_STATE_INPUT_REQUIRED
        watched = asyncio.ensure_future(collect(watcher))
        await collect(client.send_message(user("approve", task_id=task_id)))
        rest = await watched
    assert states(rest)[-1] == pb.TASK_STATE_COMPLETED
    assert text_from(rest) == "Logs gone."


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_errors_are_a2a_errors(a2a_app, fake_model, make_agent, transport):
    agent = await make_agent()
    other = await make_agent()
    fake_model.responder.push(text_reply("Hi."))
    async with await connect(a2a_app, agent, transport) as client:
        with pytest.raises(TaskNotFoundError):
            await client.get_task(pb.GetTaskRequest(id="no-such-task"))
        [*_, last] = await collect(client.send_message(user("Hello")))
        task_id, context_id = last.status_update.task_id, last.status_update.context_id
        with pytest.raises(UnsupportedOperationError):  # a finished task takes no messages
            await collect(client.send_message(user("More", task_id=task_id)))
        with pytest.raises(UnsupportedOperationError):  # nor subscriptions
            await collect(client.subscribe(pb.SubscribeToTaskRequest(id=task_id)))
        with pytest.raises(InvalidParamsError):
            await collect(client.send_message(user("Hi", context_id="no-such-context")))
    async with await connect(a2a_app, other, transport) as client:
        with pytest.raises(TaskNotFoundError):  # another agent's task is not found
            await client.get_task(pb.GetTaskRequest(id=task_id))
        with pytest.raises(InvalidParamsError):  # nor its context usable
            await collect(client.send_message(user("Hi", context_id=context_id)))


async def test_unknown_agent_is_invalid_params(a2a_app):
    async with httpx.AsyncClient(base_url=base_url(a2a_app)) as http:
        reply = await http.post("/agents/nobody/", json={
            "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}},
        }, headers={"A2A-Version": "1.0"})
    error = reply.json()["error"]
    assert error["code"] == -32602 and "nobody" in error["message"]


# --- the README's client ------------------------------------------------------------------


def readme_snippet() -> str:
    """The Python block of the README's A2A section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### A2A"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    return code[: code.index("```\n")]


async def test_readme_client_runs(a2a_app, fake_model, capsys):
    code = readme_snippet().replace("http://127.0.0.1:8080", base_url(a2a_app))
    code = code.replace("asyncio.run(main())", "")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    fake_model.responder.push(
        tool_calls_reply([("c1", "calculate", json.dumps({"expression": "17 * 23"}))]),
        text_reply("17 * 23 = 391."),
    )
    await namespace["main"]()
    out = capsys.readouterr().out
    assert "17 * 23 = 391." in out and "calculate → 391" in out
    assert out.rstrip().endswith("[TASK_STATE_COMPLETED]")


async def test_a2a_0_3_clients_are_served_on_the_same_endpoint(a2a_app, fake_model, make_agent):
    """A client that speaks A2A 0.3 (`message/stream`, `tasks/get` on the
    wire), as it would pick the card's 0.3 interface."""
    agent = await make_agent(("calculate",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "calculate", json.dumps({"expression": "6 * 7"}))]),
        text_reply("It is 42."),
    )
    async with httpx.AsyncClient() as http:
        url = f"{base_url(a2a_app)}/agents/{agent}/"
        card = json_format.ParseDict(
            (await http.get(url + ".well-known/agent-card.json")).json(), pb.AgentCard(),
            ignore_unknown_fields=True,
        )
    legacy = [i for i in card.supported_interfaces if i.protocol_version == "0.3"]
    assert [i.url for i in legacy] == [url]
    del card.supported_interfaces[:]
    card.supported_interfaces.extend(legacy)
    async with ClientFactory(ClientConfig()).create(card) as client:
        assert type(client._transport).__name__ == "CompatJsonRpcTransport"
        events = await collect(client.send_message(user("What is 6 * 7?")))
        assert states(events)[-1] == pb.TASK_STATE_COMPLETED
        assert text_from(events) == "It is 42."
        task = await client.get_task(pb.GetTaskRequest(id=events[0].task.id))
    assert task.status.state == pb.TASK_STATE_COMPLETED
