"""Structured output and the finish reasons that end a run, over real
channels against the fake OpenAI-compatible and Anthropic servers: the
agent's `response_json_schema` goes out as `response_format` (OpenAI) or
a forced `structured_output` tool (Anthropic), the answer comes back
validated in `done.structured_output`, an invalid one is retried once
(and not stored), then ERROR; `length`, `content_filter` and refusals end
runs with their own stop reasons."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format

from pilothouse.client.errors import PilothouseRpcError
from pilothouse.testmodel import SSEReply, text_reply, tool_calls_reply
from pilothouse.testmodel.anthropic import MessagesEvents, anthropic_tool_use_reply
from pilothouse.testmodel.replies import ChunkFactory
from pilothouse.v1 import agent_pb2, event_pb2, run_service_pb2
from tests.conftest import collect, kinds

CLAUDE = "anthropic/claude-fake-1"
WEATHER = {
    "title": "Weather report",
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}
LOOSE = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}


def finish_reply(text: str, reason: str, *, refusal: str | None = None) -> SSEReply:
    """An OpenAI stream of `text` (or a `refusal` delta) ending with `reason`."""
    f = ChunkFactory()
    events = [f.role(), *f.texts(text, 4)]
    if refusal is not None:
        events.append(f.chunk({"refusal": refusal}))
    events += [f.chunk({}, finish_reason=reason), "[DONE]"]
    return SSEReply(events)


async def test_a_valid_answer_comes_back_parsed(client, fake_model, session_of):
    session_id = await session_of(response_json_schema=json.dumps(WEATHER))
    fake_model.responder.push(text_reply('{"city": "Oslo", "celsius": 3}'))
    events = await collect(client.stream_to(session_id, "Weather in Oslo?"))
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.final_response == '{"city": "Oslo", "celsius": 3}'
    assert json_format.MessageToDict(done.structured_output) == {"city": "Oslo", "celsius": 3}
    assert fake_model.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Weather_report", "schema": WEATHER, "strict": True},
    }


async def test_an_invalid_answer_is_retried_once_without_a_trace(client, fake_model, session_of):
    session_id = await session_of(response_json_schema=json.dumps(LOOSE))
    fake_model.responder.push(text_reply('{"n": "three"}'), text_reply('```json\n{"n": 3}\n```'))
    events = await collect(client.stream_to(session_id, "A number"))
    retried = next(e.round_retried for e in events if e.HasField("round_retried"))
    assert (retried.cause, retried.attempt) == ("invalid_structured_output", 1)
    assert retried.error == "at $.n: 'three' is not of type 'number'"
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert json_format.MessageToDict(done.structured_output) == {"n": 3}
    assert done.iterations == 1
    assert fake_model.requests[0]["response_format"]["json_schema"]["strict"] is False
    # The retry showed the model its answer and what was wrong...
    retry = fake_model.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"n": "three"}'}
    assert retry[-1]["role"] == "user" and "'three' is not of type 'number'" in retry[-1]["content"]
    # ...but only the valid answer is stored.
    assert [m.content for m in await client.list_messages(session_id)] == [
        "A number", '```json\n{"n": 3}\n```',
    ]


async def test_a_second_invalid_answer_ends_the_run_with_error(client, fake_model, session_of):
    session_id = await session_of(response_json_schema=json.dumps(LOOSE))
    fake_model.responder.push(text_reply("three"), text_reply('{"m": 3}'))
    reply = await client.send_to(session_id, "A number", timeout=30)
    assert reply.response.stop_reason == event_pb2.STOP_REASON_ERROR
    assert reply.response.error == (
        "the answer did not match the response JSON Schema after a retry: "
        "at $: 'n' is a required property"
    )
    assert not reply.response.HasField("structured_output")
    assert [m.content for m in await client.list_messages(session_id)] == ["A number"]


async def test_tools_run_before_the_structured_answer(client, fake_model, session_of):
    session_id = await session_of(tools=("text_stats",), response_json_schema=json.dumps(LOOSE))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b"}))]),
        text_reply('{"n": 2}'),
    )
    reply = await client.send_to(session_id, "Count", timeout=30)
    assert json_format.MessageToDict(reply.response.structured_output) == {"n": 2}
    assert "response_format" in fake_model.requests[0]


async def test_a_run_can_ask_for_structured_output_itself(client, fake_model, session_of):
    session_id = await session_of()
    options = run_service_pb2.RunOptions(
        overrides=agent_pb2.ModelOverrides(response_json_schema=json.dumps(LOOSE))
    )
    fake_model.responder.push(text_reply('{"n": 1.5}'), text_reply("free text again"))
    reply = await client.send_to(session_id, "A number", options=options, timeout=30)
    assert json_format.MessageToDict(reply.response.structured_output) == {"n": 1.5}
    reply = await client.send_to(session_id, "Now in words", timeout=30)
    assert reply.response.final_response == "free text again"
    assert "response_format" not in fake_model.requests[1]


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"type": "array"}), 'must describe a JSON object at its root ("type": "object")'),
        (json.dumps({"type": "object", "properties": {"x": {"type": 5}}}), "is not a valid JSON Schema"),
    ],
)
async def test_a_bad_schema_is_invalid_argument(client, make_agent, schema, problem):
    with pytest.raises(PilothouseRpcError) as error:
        await make_agent(response_json_schema=schema)
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = [(v.field, v.description) for v in error.value.field_violations]
    assert field == "config.response_json_schema"
    assert problem in description


async def test_anthropic_answers_with_the_forced_tool(client, anthropic_model, session_of):
    session_id = await session_of(model=CLAUDE, response_json_schema=json.dumps(WEATHER))
    anthropic_model.responder.push(
        anthropic_tool_use_reply([("toolu_1", "structured_output", '{"city": "Rome", "celsius": 21}')])
    )
    events = await collect(client.stream_to(session_id, "Weather in Rome?"))
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert json_format.MessageToDict(done.structured_output) == {"city": "Rome", "celsius": 21}
    assert done.final_response == '{"city": "Rome", "celsius": 21}'
    assert "tool_calls_begin" not in kinds(events) and "text_delta" in kinds(events)
    body = anthropic_model.requests[0]
    assert body["tools"] == [{
        "name": "structured_output",
        "description": "Give your final answer with this tool: its input is the answer, "
        "matching the required JSON Schema.",
        "input_schema": WEATHER,
    }]
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}


async def test_anthropic_keeps_its_own_tools_callable(client, anthropic_model, session_of):
    session_id = await session_of(tools=("text_stats",), model=CLAUDE,
                                  response_json_schema=json.dumps(LOOSE))
    anthropic_model.responder.push(
        anthropic_tool_use_reply([("toolu_1", "text_stats", '{"text": "a b c"}')]),
        anthropic_tool_use_reply([("toolu_2", "structured_output", '{"n": 3}')]),
    )
    reply = await client.send_to(session_id, "Count", timeout=30)
    assert json_format.MessageToDict(reply.response.structured_output) == {"n": 3}
    assert anthropic_model.requests[0]["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in anthropic_model.requests[0]["tools"]] == ["text_stats", "structured_output"]
    # The answer is sent back as text in the next request of the session.
    anthropic_model.responder.push(anthropic_tool_use_reply([("toolu_3", "structured_output", '{"n": 4}')]))
    await client.send_to(session_id, "Again", timeout=30)
    last_turn = anthropic_model.requests[2]["messages"][-2]
    assert last_turn == {"role": "assistant", "content": [{"type": "text", "text": '{"n": 3}'}]}


# --- finish reasons --------------------------------------------------------


async def test_length_ends_the_run_with_max_tokens(client, fake_model, session_of):
    session_id = await session_of(max_tokens=5)
    fake_model.responder.push(finish_reply("The answer is cut", "length"))
    reply = await client.send_to(session_id, "Tell me a story", timeout=30)
    response = reply.response
    assert response.stop_reason == event_pb2.STOP_REASON_MAX_TOKENS
    assert response.final_response == "The answer is cut"
    assert response.error == "the answer was cut at the round's token limit (5 tokens)"
    assert [m.content for m in await client.list_messages(session_id)][-1] == "The answer is cut"


async def test_content_filter_ends_the_run_with_its_stop_reason(client, fake_model, session_of):
    session_id = await session_of()
    fake_model.responder.push(finish_reply("", "content_filter"))
    reply = await client.send_to(session_id, "Something bad", timeout=30)
    assert reply.response.stop_reason == event_pb2.STOP_REASON_CONTENT_FILTER
    assert reply.response.error == "the provider's content filter stopped the answer"
    assert [m.content for m in await client.list_messages(session_id)] == ["Something bad"]


async def test_an_openai_refusal_is_marked(client, fake_model, session_of):
    session_id = await session_of(response_json_schema=json.dumps(LOOSE))
    fake_model.responder.push(finish_reply("", "stop", refusal="I can't help with that."))
    reply = await client.send_to(session_id, "Something bad", timeout=30)
    assert reply.response.stop_reason == event_pb2.STOP_REASON_REFUSAL
    assert reply.response.final_response == "I can't help with that."
    assert reply.response.error == "the model refused: I can't help with that."
    # Not retried as invalid structured output.
    assert len(fake_model.requests) == 1


async def test_an_anthropic_refusal_without_text_is_a_refusal(client, anthropic_model, session_of):
    session_id = await session_of(model=CLAUDE)
    f = MessagesEvents()
    anthropic_model.responder.push(SSEReply(f.message_start() + f.message_delta("refusal", 0) + f.message_stop()))
    reply = await client.send_to(session_id, "Something bad", timeout=30)
    assert reply.response.stop_reason == event_pb2.STOP_REASON_REFUSAL
    assert reply.response.final_response == ""
    assert reply.response.error == "the model refused: refusal"
    session = await client.get_session(session_id)
    assert session.last_run_stop_reason == event_pb2.STOP_REASON_REFUSAL
