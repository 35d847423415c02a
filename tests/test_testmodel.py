"""The fake Chat Completions server and the built-in scripted test model,
over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model import (
    ChatChunk,
    ChatRequest,
    MessageBuilder,
    ModelSettings,
    ReasoningEffort,
)
from pilothouse.runtime.model.openai import OpenAIChatModel
from pilothouse.runtime.tools import ToolSpec
from pilothouse.testmodel import (
    MODEL_NAME,
    ChatCompletionsServer,
    JSONReply,
    QueueResponder,
    ScriptedTestModel,
    SSEReply,
    error_in_stream_reply,
    example_for_schema,
    start_scripted_model,
    text_reply,
    tool_calls_reply,
)
from pilothouse.testmodel.scripted import INTRO

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures" / "sse"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"captured streams not found at {FIXTURES}"
)


@pytest_asyncio.fixture(loop_scope="session")
async def scripted() -> AsyncIterator[tuple[ChatCompletionsServer, OpenAIChatModel]]:
    server, url = await start_scripted_model()
    model = OpenAIChatModel(base_url=url, max_retries=0, provider_name="pilothouse-test")
    try:
        yield server, model
    finally:
        await model.aclose()
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def queued() -> AsyncIterator[
    tuple[ChatCompletionsServer, QueueResponder, httpx.AsyncClient]
]:
    queue = QueueResponder()
    server = ChatCompletionsServer(queue)
    url = await server.start()
    client = httpx.AsyncClient(base_url=url)
    try:
        yield server, queue, client
    finally:
        await client.aclose()
        await server.stop()


async def run(model: OpenAIChatModel, request: ChatRequest) -> tuple[Message, list[ChatChunk]]:
    builder = MessageBuilder()
    chunks = []
    async for chunk in model.stream(request):
        chunks.append(chunk)
        builder.accept(chunk)
    return builder.build(), chunks


# --- schema-valid arguments ------------------------------------------------------------------


def test_example_prefers_examples_then_default_then_enum_then_type() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "examples": ["Paris", "Rome"], "default": "Oslo"},
            "units": {"type": "string", "enum": ["c", "f"], "default": "f"},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
            "days": {"type": "integer"},
            "ratio": {"type": "number"},
            "verbose": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city", "days"],
    }
    assert example_for_schema(schema, all_properties=True) == {
        "city": "Paris",
        "units": "f",
        "mode": "fast",
        "days": 1,
        "ratio": 1.0,
        "verbose": True,
        "tags": [],
    }
    assert example_for_schema(schema) == {"city": "Paris", "days": 1}


def test_example_nested_objects_refs_and_bounds() -> None:
    # The shape pydantic generates: $defs, $ref, anyOf with null, bounds.
    schema = {
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "minLength": 3},
                    "zip": {"type": "string"},
                    "floor": {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "null"}]},
                },
                "required": ["street", "floor"],
            }
        },
        "type": "object",
        "properties": {
            "address": {"$ref": "#/$defs/Address"},
            "count": {"type": "integer", "minimum": 10, "maximum": 20},
            "score": {"type": "number", "exclusiveMaximum": 0},
            "ids": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "when": {"type": "string", "format": "date-time"},
            "maybe": {"type": ["null", "string"]},
        },
        "required": ["address", "count", "score", "ids", "when", "maybe"],
    }
    assert example_for_schema(schema) == {
        "address": {"street": "aaa", "floor": 5},
        "count": 10,
        "score": -0.5,
        "ids": [1, 1],
        "when": "2024-01-01T00:00:00Z",
        "maybe": "a",
    }


def test_example_for_schema_without_properties() -> None:
    assert example_for_schema({"type": "object"}, all_properties=True) == {}
    assert example_for_schema({}) == "a"
    assert example_for_schema({"const": 42}) == 42


# --- the scripted model ----------------------------------------------------------------------

WEATHER_WIRE = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "examples": ["Lisbon"]},
                "days": {"type": "integer", "default": 2},
            },
            "required": ["city"],
        },
    },
}
SEARCH_WIRE = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query", "limit"],
        },
    },
}


def spec(wire: dict[str, Any]) -> ToolSpec:
    function = wire["function"]
    return ToolSpec(function["name"], function.get("description", ""), function["parameters"])


WEATHER = spec(WEATHER_WIRE)
SEARCH = spec(SEARCH_WIRE)


async def test_scripted_tool_round_then_text_round(scripted: Any) -> None:
    server, model = scripted
    messages = [Message(Role.SYSTEM, "be brief"), Message.user("weather in Lisbon?")]
    first, chunks = await run(model, ChatRequest(MODEL_NAME, messages, tools=[WEATHER, SEARCH]))
    assert first.content == ""
    assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
        ("call_1", "get_weather", {"city": "Lisbon", "days": 2}),
        ("call_2", "search", {"query": "a", "limit": 1}),
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert {c.model for c in chunks} == {MODEL_NAME}

    long_result = "x" * 500
    messages += [
        first,
        Message.tool('{"temp_c": 21, "sky": "clear"}', "call_1", "get_weather"),
        Message.tool(long_result, "call_2", "search"),
    ]
    second, chunks = await run(model, ChatRequest(MODEL_NAME, messages, tools=[WEATHER, SEARCH]))
    assert second.tool_calls == []
    assert second.content.startswith(INTRO)
    assert "scripted test model" in second.content
    assert "no model endpoint is configured" in second.content
    assert '- get_weather -> {"temp_c": 21, "sky": "clear"}' in second.content
    assert f"- search -> {'x' * 200}..." in second.content
    assert "x" * 201 not in second.content
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert len(server.requests) == 2


async def test_scripted_echo_without_tools(scripted: Any) -> None:
    _, model = scripted
    messages = [
        Message.user("first"),
        Message(Role.ASSISTANT, "ok"),
        Message.user("hello there"),
    ]
    message, _ = await run(model, ChatRequest(MODEL_NAME, messages))
    assert message.content == f"{INTRO} You said: hello there"
    assert message.reasoning_content == ""


async def test_scripted_echo_of_content_parts(scripted: Any) -> None:
    server, _ = scripted
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        answer = (await client.post("/chat/completions", json=body)).json()
    assert answer["choices"][0]["message"]["content"] == f"{INTRO} You said: hello there"


async def test_scripted_tool_choice(scripted: Any) -> None:
    _, model = scripted
    messages = [Message.user("go")]
    named, _ = await run(
        model, ChatRequest(MODEL_NAME, messages, tools=[WEATHER, SEARCH], tool_choice="search")
    )
    assert [(c.id, c.name) for c in named.tool_calls] == [("call_1", "search")]
    none, _ = await run(
        model, ChatRequest(MODEL_NAME, messages, tools=[WEATHER, SEARCH], tool_choice="none")
    )
    assert none.tool_calls == []
    assert none.content == f"{INTRO} You said: go"


async def test_scripted_usage_and_reasoning(scripted: Any) -> None:
    server, model = scripted
    messages = [{"role": "user", "content": "count me"}]
    request = ChatRequest(
        MODEL_NAME,
        [Message.user("count me")],
        settings=ModelSettings(reasoning_effort=ReasoningEffort.HIGH),
    )
    message, chunks = await run(model, request)
    assert server.requests[-1]["reasoning_effort"] == "high"
    assert message.reasoning_content == (
        "Scripted reasoning (high effort): I will echo the user's message."
    )
    usages = [c.usage for c in chunks if c.usage]
    prompt = (len(json.dumps(messages)) + len("[]") + 3) // 4
    output = len(message.content) + len(message.reasoning_content)
    assert usages == [
        Usage(
            prompt_tokens=prompt,
            completion_tokens=(output + 3) // 4,
            total_tokens=prompt + (output + 3) // 4,
            cached_tokens=0,
            reasoning_tokens=(len(message.reasoning_content) + 3) // 4,
        )
    ]
    # The usage chunk is the trailing empty-choices chunk, after the finish.
    assert chunks[-1].usage is not None and chunks[-1].finish_reason is None


async def test_scripted_no_usage_chunk_unless_asked(scripted: Any) -> None:
    server, _ = scripted
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.base_url}/chat/completions", json=body)
    payloads = [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == MODEL_NAME for c in chunks)


async def test_scripted_is_deterministic() -> None:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "same"}],
        "tools": [WEATHER_WIRE],
        "stream": True,
    }
    first = await ScriptedTestModel()(body)
    second = await ScriptedTestModel()(body)
    assert first.events == second.events


async def test_scripted_non_streamed_request(scripted: Any) -> None:
    server, _ = scripted
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "plain"}]}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.base_url}/chat/completions", json=body)
        models = await client.get(f"{server.base_url}/models")
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == MODEL_NAME
    [choice] = completion["choices"]
    assert choice["message"]["content"] == f"{INTRO} You said: plain"
    assert choice["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] > 0
    assert [m["id"] for m in models.json()["data"]] == [MODEL_NAME]


async def test_start_scripted_model_logs_its_url(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pilothouse.testmodel.scripted"):
        server, url = await start_scripted_model()
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert any(
            "built-in scripted test model" in r.getMessage() and url in r.getMessage()
            for r in caplog.records
        )
    finally:
        await server.stop()


# --- the fake server -------------------------------------------------------------------------


async def test_queue_serves_in_order_and_records_requests(queued: Any) -> None:
    server, queue, client = queued
    queue.push(text_reply("one"), JSONReply(429, {"error": {"message": "slow down"}}))
    first = await client.post("/chat/completions", json={"stream": True, "n": 1})
    second = await client.post("/chat/completions", json={"stream": True, "n": 2})
    third = await client.post("/chat/completions", json={"stream": True, "n": 3})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert second.status_code == 429
    assert second.json() == {"error": {"message": "slow down"}}
    assert third.status_code == 500
    assert third.json()["error"]["message"] == "fake model: no reply queued"
    assert [r["n"] for r in server.requests] == [1, 2, 3]
    assert queue.served == 2 and queue.remaining == 0


async def test_queue_accepts_functions_of_the_request(queued: Any) -> None:
    _, queue, client = queued

    async def echo(body: dict[str, Any]) -> SSEReply:
        return text_reply(body["messages"][-1]["content"].upper())

    queue.push(echo)
    response = await client.post(
        "/chat/completions", json={"messages": [{"role": "user", "content": "hey"}]}
    )
    assert response.json()["choices"][0]["message"]["content"] == "HEY"


async def test_non_streamed_request_assembles_tool_calls_and_usage(queued: Any) -> None:
    _, queue, client = queued
    usage = Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12)
    queue.push(
        tool_calls_reply(
            [("call_1", "f", '{"a": 1}'), ("call_2", "g", "{}")], fragment_size=2, usage=usage
        )
    )
    response = await client.post("/chat/completions", json={"stream": False})
    completion = response.json()
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["total_tokens"] == 12


async def test_non_streamed_error_in_stream_becomes_http_error(queued: Any) -> None:
    _, queue, client = queued
    queue.push(error_in_stream_reply(message="nope", code="bad"))
    response = await client.post("/chat/completions", json={"stream": False})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "nope"


async def test_invalid_json_body_is_rejected(queued: Any) -> None:
    server, _, client = queued
    response = await client.post(
        "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert server.requests == []


@needs_fixtures
async def test_from_file_replays_bytes_exactly(queued: Any) -> None:
    _, queue, client = queued
    path = FIXTURES / "groq_event_error_no_done.sse"
    queue.push(SSEReply.from_file(path))
    async with client.stream("POST", "/chat/completions", json={"stream": True}) as response:
        body = await response.aread()
    assert body == path.read_bytes()


@needs_fixtures
async def test_non_streamed_request_from_a_captured_stream(queued: Any) -> None:
    _, queue, client = queued
    queue.push(SSEReply.from_file(FIXTURES / "deepseek_reasoning_content_stream.sse"))
    response = await client.post("/chat/completions", json={"stream": False})
    completion = response.json()
    message = completion["choices"][0]["message"]
    assert message["content"] == "Hello there! 😊 How can I help you today?"
    assert message["reasoning_content"].startswith('Hmm, the user just said "Hello".')
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 198}


@needs_fixtures
async def test_non_stream_capture_served_as_json(queued: Any) -> None:
    _, queue, client = queued
    path = FIXTURES / "openai_nonstream_parallel_tool_calls.json"
    queue.push(JSONReply.from_file(path, 200))
    response = await client.post("/chat/completions", json={"stream": False})
    assert response.content == path.read_bytes()
    assert [
        c["function"]["name"] for c in response.json()["choices"][0]["message"]["tool_calls"]
    ] == [
        "add",
        "multiply",
    ]


async def test_sse_item_encoding(queued: Any) -> None:
    _, queue, client = queued
    queue.push(SSEReply([": comment", "event: error", '{"a": 1}', "data: [DONE]", {"b": 2}, ""]))
    response = await client.post("/chat/completions", json={"stream": True})
    assert response.text == (
        ': comment\nevent: error\ndata: {"a": 1}\n\ndata: [DONE]\n\ndata: {"b": 2}\n\n\n'
    )
