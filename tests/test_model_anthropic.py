"""AnthropicChatModel against a real HTTP server (the fake Messages server on
127.0.0.1): every captured Anthropic stream and error body, the request
body built from the runtime's types, thinking sent back, retries and
stream failures."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall, Usage
from pilothouse.runtime.model import (
    ChatChunk,
    ChatRequest,
    FailureCause,
    MessageBuilder,
    ModelError,
    ModelSettings,
    ReasoningEffort,
)
from pilothouse.runtime.model.anthropic import AnthropicChatModel, messages_url
from pilothouse.runtime.model.anthropic_wire import build_request_body
from pilothouse.runtime.tools import ToolSpec
from pilothouse.testmodel import Cut, Delay, JSONReply, QueueResponder, SSEReply
from pilothouse.testmodel.anthropic import (
    AnthropicMessagesServer,
    MessagesEvents,
    anthropic_error_body,
    anthropic_error_event_reply,
    anthropic_text_reply,
    anthropic_tool_use_reply,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures" / "anthropic"
REQUEST = ChatRequest(model="claude-test", messages=[Message.user("hi")])


@dataclass
class Fake:
    server: AnthropicMessagesServer
    queue: QueueResponder
    url: str
    models: list[AnthropicChatModel] = field(default_factory=list)

    def model(self, **options: Any) -> AnthropicChatModel:
        settings: dict[str, Any] = {"retry_base_delay": 0.0, "max_retries": 2}
        settings.update(options)
        model = AnthropicChatModel(base_url=self.url, **settings)
        self.models.append(model)
        return model


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[Fake]:
    queue = QueueResponder()
    server = AnthropicMessagesServer(queue)
    url = await server.start()
    state = Fake(server, queue, url)
    try:
        yield state
    finally:
        for model in state.models:
            await model.aclose()
        await server.stop()


@dataclass
class Round:
    message: Message
    chunks: list[ChatChunk]

    @property
    def usage(self) -> list[Usage]:
        return [c.usage for c in self.chunks if c.usage is not None]

    @property
    def finish_reasons(self) -> list[str]:
        return [c.finish_reason for c in self.chunks if c.finish_reason]

    @property
    def models(self) -> set[str | None]:
        return {c.model for c in self.chunks}


async def run(model: AnthropicChatModel, request: ChatRequest = REQUEST) -> Round:
    builder = MessageBuilder()
    chunks: list[ChatChunk] = []
    async for chunk in model.stream(request):
        chunks.append(chunk)
        builder.accept(chunk)
    return Round(builder.build(), chunks)


async def run_until_error(
    model: AnthropicChatModel, request: ChatRequest = REQUEST
) -> tuple[ModelError, list[ChatChunk]]:
    chunks: list[ChatChunk] = []
    with pytest.raises(ModelError) as caught:
        async for chunk in model.stream(request):
            chunks.append(chunk)
    return caught.value, chunks


def carries_something(chunk: ChatChunk) -> bool:
    return bool(
        chunk.content or chunk.reasoning or chunk.tool_calls or chunk.finish_reason
        or chunk.usage or chunk.reasoning_signature or chunk.redacted_reasoning
    )  # fmt: skip


def calls_of(message: Message) -> list[tuple[str, str, Any]]:
    return [(c.id, c.name, json.loads(c.arguments)) for c in message.tool_calls]


# --- captured streams and error bodies -------------------------------------------------------


def check_text_ping(r: Round) -> None:
    assert r.message.content.startswith('Olá! (That\'s "hi" in Portuguese)\n\n')
    assert r.message.tool_calls == [] and r.message.reasoning_content == ""
    assert r.finish_reasons == ["stop"]
    assert r.usage == [Usage(16, 38, 54)]
    assert r.models == {"claude-sonnet-4-20250514"}


def check_cache_read(r: Round) -> None:
    assert r.message.content == "Hello"
    # input_tokens (3) leaves the 1217 cached tokens out; prompt_tokens counts all.
    assert r.usage == [Usage(1220, 4, 1224, cached_tokens=1217)]
    assert r.finish_reasons == ["stop"]


def check_tool_use(r: Round) -> None:
    assert r.message.content == "I'll get the weather information for Florence, Italy for you."
    assert calls_of(r.message) == [
        ("toolu_01N2eM4V43kGCDkq2Lw7ChWQ", "weather", {"location": "Florence,Italy"})
    ]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == [Usage(394, 67, 461)]


def check_parallel(r: Round) -> None:
    assert r.message.content == "I'll add and multiply the numbers 2 and 3 for you."
    assert calls_of(r.message) == [
        ("toolu_01UYxUYC2zRPY8wiutnF48eP", "add", {"a": 2, "b": 3}),
        ("toolu_01VaRx1jpWCvPhi7L4kywAcd", "multiply", {"a": 2, "b": 3}),
    ]
    assert r.finish_reasons == ["tool_calls"]


def check_thinking_tool_use(r: Round) -> None:
    reasoning = r.message.reasoning_content
    assert reasoning.startswith("The user is asking for weather information for Florence, Italy.")
    assert calls_of(r.message) == [
        ("toolu_01Js4AMfx5qpTLhwTusnvT68", "weather", {"location": "Florence, Italy"})
    ]
    [block] = r.message.reasoning_blocks
    assert block.text == reasoning
    assert block.signature.startswith("EtYDCkYICx") and len(block.signature) > 100
    assert [c.reasoning_signature for c in r.chunks if c.reasoning_signature] == [block.signature]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == [Usage(424, 119, 543)]


def check_redacted(r: Round) -> None:
    assert r.message.content.startswith("I notice that you've sent what appears to be some")
    assert r.message.reasoning_content == ""
    assert [b.redacted[:10] for b in r.message.reasoning_blocks] == ["EqkECkYIBx", "EtgBCkYIBx"]
    assert all(not b.text and not b.signature for b in r.message.reasoning_blocks)
    assert r.finish_reasons == ["stop"]


def check_refusal(r: Round) -> None:
    assert r.message.content == "" and r.message.tool_calls == []
    assert r.finish_reasons == ["refusal"]
    [refusal] = [c.refusal for c in r.chunks if c.refusal]
    assert "violate Anthropic's Terms of Service" in refusal and "fallback model — see" in refusal
    assert r.usage == [Usage(97, 0, 97)]
    assert r.models == {"claude-fable-5-1"}


def check_pause_turn(r: Round) -> None:
    # The server-tool blocks (web_search) are the provider's own: no tool call.
    assert r.message.tool_calls == []
    assert r.message.content.startswith("I'll run these searches one at a time as requested.")
    [block] = r.message.reasoning_blocks
    assert block.signature and block.text == r.message.reasoning_content
    assert r.finish_reasons == ["pause_turn"]
    [usage] = r.usage
    assert usage.reasoning_tokens == 261


def check_overloaded_event(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.code == "overloaded_error"
    assert "anthropic reported an error in the stream: Overloaded" in error.message
    assert error.status_code == 529
    assert error.retryable and error.mid_stream
    assert error.cause is FailureCause.ERROR_EVENT
    assert chunks == []


def check_api_error_midstream(error: ModelError, chunks: list[ChatChunk]) -> None:
    # The capture is the tail of a stream: its text deltas still count.
    assert "".join(c.content or "" for c in chunks) == "d with a replacement character ("
    assert error.code == "api_error" and error.status_code == 500
    assert "Internal server error" in error.message
    assert error.retryable and error.mid_stream


def check_400(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.status_code == 400 and error.code == "invalid_request_error"
    assert "HTTP 400: messages.2.content.0: unexpected `tool_use_id`" in error.message
    assert "(request req_011Cd65WVh8Zrvno3NunpJ73)" in error.message
    assert not error.retryable and not error.mid_stream
    assert error.cause is FailureCause.CLIENT_ERROR


def check_529(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.status_code == 529 and error.code == "overloaded_error"
    assert "HTTP 529: Overloaded" in error.message
    assert error.retryable and error.cause is FailureCause.OVERLOADED


Success = Callable[[Round], None]
Failure = Callable[[ModelError, list[ChatChunk]], None]

# file -> (HTTP status of a JSON body, check, succeeds)
CAPTURES: dict[str, tuple[int, Success | Failure, bool]] = {
    "anthropic_text_stream_ping.sse": (200, check_text_ping, True),
    "anthropic_text_stream_cache_read.sse": (200, check_cache_read, True),
    "anthropic_tool_use_stream.sse": (200, check_tool_use, True),
    "anthropic_parallel_tool_use_stream.sse": (200, check_parallel, True),
    "anthropic_thinking_then_tool_use_stream.sse": (200, check_thinking_tool_use, True),
    "anthropic_redacted_thinking_stream.sse": (200, check_redacted, True),
    "anthropic_refusal_stream.sse": (200, check_refusal, True),
    "anthropic_pause_turn_web_search_stream.sse": (200, check_pause_turn, True),
    "anthropic_event_error_overloaded_TRANSCRIBED.sse": (200, check_overloaded_event, False),
    "anthropic_event_error_api_error_midstream_PARTIAL_TRANSCRIBED.sse": (
        200, check_api_error_midstream, False,
    ),
    "anthropic_error_400_invalid_request_tool_result.json": (400, check_400, False),
    "anthropic_error_529_overloaded_EXTRACTED.json": (529, check_529, False),
}  # fmt: skip


def test_every_capture_has_a_check() -> None:
    present = {p.name for p in FIXTURES.iterdir() if p.suffix in (".sse", ".json")}
    assert present == set(CAPTURES)


@pytest.mark.parametrize("name", sorted(CAPTURES))
async def test_replay_capture(fake: Fake, name: str) -> None:
    status, check, succeeds = CAPTURES[name]
    path = FIXTURES / name
    reply = SSEReply.from_file(path) if path.suffix == ".sse" else JSONReply.from_file(path, status)
    fake.queue.push(reply)
    model = fake.model(max_retries=0)
    if succeeds:
        result = await run(model)
        assert all(carries_something(c) for c in result.chunks)
        check(result)  # type: ignore[call-arg]
    else:
        error, chunks = await run_until_error(model)
        assert "anthropic" in error.message and f"[host 127.0.0.1:{fake.server.port}]" in error.message
        check(error, chunks)  # type: ignore[call-arg]
    assert len(fake.server.requests) == 1


async def test_capture_replay_with_gaps_between_events(fake: Fake) -> None:
    reply = SSEReply.from_file(FIXTURES / "anthropic_parallel_tool_use_stream.sse", delay=0.001)
    fake.queue.push(reply)
    check_parallel(await run(fake.model()))


# --- the request -----------------------------------------------------------------------------

WEATHER = ToolSpec(
    "weather", "Weather for a city.", {"type": "object", "properties": {"city": {"type": "string"}}}
)
NOW = ToolSpec("now", "", {"type": "object", "properties": {}})


def history_with_tools() -> list[Message]:
    return [
        Message(Role.SYSTEM, "Answer in French."),
        Message.user("Weather in Paris and the time?"),
        Message(
            Role.ASSISTANT,
            "Let me check.",
            reasoning_content="I need two tools.",
            tool_calls=[ToolCall("toolu_1", "weather", '{"city": "Paris"}'), ToolCall("toolu_2", "now")],
            reasoning_blocks=[ReasoningBlock("I need two tools.", "sig-abc"), ReasoningBlock(redacted="opaque")],
        ),
        Message.tool('{"temp_c": 21}', "toolu_1", "weather"),
        Message.tool("", "toolu_2", "now"),
        Message.user("Also in Celsius please"),  # steering after the results
    ]  # fmt: skip


async def test_request_body_and_headers(fake: Fake) -> None:
    fake.queue.push(anthropic_text_reply("Il fait 21 °C."))
    request = ChatRequest(
        model="claude-test",
        messages=history_with_tools(),
        system="You are terse.",
        tools=[WEATHER, NOW],
        tool_choice="auto",
        settings=ModelSettings(temperature=0.3, top_p=0.9, stop=("END",)),
    )
    model = fake.model(api_key="sk-ant-1", extra_headers={"anthropic-beta": "tools-2024"})
    await run(model, request)
    [body] = fake.server.requests
    assert body == {
        "model": "claude-test",
        "max_tokens": 4096,
        "stream": True,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and the time?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I need two tools.", "signature": "sig-abc"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp_c": 21}'},
                    {"type": "tool_result", "tool_use_id": "toolu_2"},
                    {"type": "text", "text": "Also in Celsius please"},
                ],
            },
        ],
        "tools": [
            {"name": "weather", "description": "Weather for a city.",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "auto"},
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }  # fmt: skip
    [headers] = fake.server.request_headers
    assert headers["x-api-key"] == "sk-ant-1"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "tools-2024"
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        (None, None, None),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ("weather", None, {"type": "tool", "name": "weather"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: str | None, parallel: bool | None, expected: Any) -> None:
    request = ChatRequest(
        "m", [Message.user("x")], tools=[WEATHER], tool_choice=choice,
        settings=ModelSettings(parallel_tool_calls=parallel),
    )  # fmt: skip
    assert build_request_body(request).get("tool_choice") == expected


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking", "sent_max"),
    [
        (ReasoningEffort.DEFAULT, None, None, 4096),
        (ReasoningEffort.NONE, None, None, 4096),
        (ReasoningEffort.LOW, None, 1024, 4096 + 1024),
        (ReasoningEffort.MEDIUM, None, 4096, 4096 + 4096),
        (ReasoningEffort.HIGH, None, 16384, 4096 + 16384),
        (ReasoningEffort.HIGH, 8000, 7999, 8000),  # the budget stays under max_tokens
        (ReasoningEffort.HIGH, 1000, None, 1000),  # too few tokens to think within
    ],
)
def test_thinking_budget_from_effort(
    effort: ReasoningEffort, max_tokens: int | None, thinking: int | None, sent_max: int
) -> None:
    request = ChatRequest(
        "m", [Message.user("x")], settings=ModelSettings(reasoning_effort=effort, max_tokens=max_tokens)
    )
    body = build_request_body(request)
    assert body["max_tokens"] == sent_max
    expected = {"type": "enabled", "budget_tokens": thinking} if thinking else None
    assert body.get("thinking") == expected


def test_thinking_is_left_off_mid_tool_loop_without_a_thinking_block() -> None:
    # A tool round made without thinking (another provider, or thinking off)
    # cannot be continued with thinking on: the API wants the last assistant
    # turn to start with a thinking block.
    settings = ModelSettings(reasoning_effort=ReasoningEffort.HIGH)
    unsigned = [
        Message.user("time?"),
        Message(Role.ASSISTANT, "", reasoning_content="unsigned", tool_calls=[ToolCall("t1", "now")]),
        Message.tool("12:00", "t1", "now"),
    ]
    body = build_request_body(ChatRequest("m", unsigned, tools=[NOW], settings=settings))
    assert "thinking" not in body
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]
    signed = history_with_tools()[1:5]
    assert "thinking" in build_request_body(ChatRequest("m", signed, tools=[NOW], settings=settings))
    finished = [*unsigned, Message(Role.ASSISTANT, "It is noon."), Message.user("thanks")]
    assert "thinking" in build_request_body(ChatRequest("m", finished, settings=settings))


def test_messages_url() -> None:
    assert messages_url("https://api.anthropic.com") == "https://api.anthropic.com/v1/messages"
    assert messages_url("https://proxy.example/anthropic/v1/") == (
        "https://proxy.example/anthropic/v1/messages"
    )


# --- a tool loop with thinking ---------------------------------------------------------------


async def test_thinking_and_its_signature_go_back_on_the_next_call(fake: Fake) -> None:
    fake.queue.push(
        anthropic_tool_use_reply(
            [("toolu_a", "weather", '{"city": "Rome"}'), ("toolu_b", "now", "{}")],
            thinking="Two lookups are needed.", signature="c2lnbmF0dXJl",
        ),
        anthropic_text_reply("Sunny, noon.", redacted=["cmVkYWN0ZWQ="], input_tokens=50),
    )  # fmt: skip
    model = fake.model()
    settings = ModelSettings(reasoning_effort=ReasoningEffort.MEDIUM)
    history = [Message.user("Rome?")]
    first = await run(model, ChatRequest("claude-test", history, tools=[WEATHER, NOW], settings=settings))
    assert calls_of(first.message) == [("toolu_a", "weather", {"city": "Rome"}), ("toolu_b", "now", {})]
    assert first.message.reasoning_blocks == [ReasoningBlock("Two lookups are needed.", "c2lnbmF0dXJl")]
    history += [
        first.message,
        Message.tool("sunny", "toolu_a", "weather"),
        Message.tool("12:00", "toolu_b", "now"),
    ]
    second = await run(model, ChatRequest("claude-test", history, tools=[WEATHER, NOW], settings=settings))
    assert second.message.content == "Sunny, noon."
    assert second.message.reasoning_blocks == [ReasoningBlock(redacted="cmVkYWN0ZWQ=")]
    sent = fake.server.requests[1]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": "Two lookups are needed.", "signature": "c2lnbmF0dXJl",
    }  # fmt: skip
    assert [b["tool_use_id"] for b in sent["messages"][2]["content"]] == ["toolu_a", "toolu_b"]


async def test_cache_write_tokens(fake: Fake) -> None:
    fake.queue.push(anthropic_text_reply("ok", input_tokens=5, cache_read=100, cache_write=900))
    result = await run(fake.model())
    assert result.usage == [Usage(1005, 5, 1010, cached_tokens=100, cache_write_tokens=900)]


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_type"), [(529, "overloaded_error"), (429, "rate_limit_error")])
async def test_overloaded_and_rate_limited_are_retried_with_retry_after(
    fake: Fake, status: int, error_type: str
) -> None:
    fake.queue.push(
        JSONReply(status, anthropic_error_body(error_type, "busy"), {"retry-after": "0.2"}),
        anthropic_text_reply("finally"),
    )
    started = time.monotonic()
    result = await run(fake.model(max_retries=2, retry_base_delay=0.0))
    assert result.message.content == "finally"
    assert len(fake.server.requests) == 2
    # With no base delay, only the header can account for the wait.
    assert time.monotonic() - started >= 0.2


async def test_529_exhausts_retries(fake: Fake) -> None:
    fake.queue.push(*(JSONReply(529, anthropic_error_body("overloaded_error", "Overloaded")) for _ in range(3)))
    error, _ = await run_until_error(fake.model(max_retries=2))
    assert error.status_code == 529 and error.retryable
    assert "gave up after 3 attempts" in error.message
    assert error.cause is FailureCause.OVERLOADED


async def test_error_event_mid_stream_keeps_the_usage_reported(fake: Fake) -> None:
    fake.queue.push(anthropic_error_event_reply("overloaded_error", "Overloaded", after_text="Par"))
    error, chunks = await run_until_error(fake.model(max_retries=3))
    assert [c.content for c in chunks] == ["Par"]
    assert error.code == "overloaded_error" and error.retryable and error.mid_stream
    assert error.usage == Usage(10, 1, 11)  # what message_start reported
    assert len(fake.server.requests) == 1  # not retried once output began


async def test_stream_cut_mid_answer(fake: Fake) -> None:
    f = MessagesEvents()
    fake.queue.push(SSEReply([*f.message_start(), *f.text_block(0, "partial"), Cut()]))
    error, chunks = await run_until_error(fake.model(max_retries=3))
    assert "".join(c.content or "" for c in chunks) == "partial"
    assert error.message.startswith("model stream ended before completion")
    assert error.cause is FailureCause.CONNECTION_RESET
    assert error.retryable and error.mid_stream
    assert len(fake.server.requests) == 1


async def test_ping_events_for_ever_end_at_the_idle_timeout(fake: Fake) -> None:
    """`ping` events keep the connection alive but are not progress: a
    stream of nothing else ends after the idle timeout (the fault suite
    found one that never did)."""
    f = MessagesEvents()
    pings: list = [item for _ in range(200) for item in (*f.ping(), Delay(0.05))]
    start = f.event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
    delta = f.event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": "a"}})
    fake.queue.push(SSEReply([*f.message_start(), *start, *delta, *pings, *f.message_stop()]))
    error, chunks = await run_until_error(fake.model(read_timeout=5.0, idle_timeout=0.3, max_retries=0))
    assert "".join(c.content or "" for c in chunks) == "a"
    assert "sent nothing for 0.3s" in error.message
    assert error.cause is FailureCause.IDLE_TIMEOUT


async def test_stream_ending_before_its_stop_reason(fake: Fake) -> None:
    f = MessagesEvents()
    fake.queue.push(SSEReply([*f.message_start(), *f.text_block(0, "half")]))
    error, _ = await run_until_error(fake.model())
    assert "without a stop reason or message_stop" in error.message
    assert error.cause is FailureCause.INCOMPLETE and error.retryable


async def test_stop_reason_then_connection_lost_keeps_the_answer(fake: Fake) -> None:
    f = MessagesEvents()
    fake.queue.push(
        SSEReply([*f.message_start(), *f.text_block(0, "whole"), *f.message_delta("max_tokens"), Cut()])
    )
    result = await run(fake.model())
    assert result.message.content == "whole"
    assert result.finish_reasons == ["length"]


async def test_tool_use_without_input_deltas_gets_empty_arguments(fake: Fake) -> None:
    f = MessagesEvents()
    start = {"type": "tool_use", "id": "toolu_x", "name": "now", "input": {}}
    items = [
        *f.message_start(),
        *f.event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
        *f.event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        *f.message_delta("tool_use"),
        *f.message_stop(),
    ]
    fake.queue.push(SSEReply(items))
    result = await run(fake.model())
    assert calls_of(result.message) == [("toolu_x", "now", {})]


async def test_an_event_stream_is_required(fake: Fake) -> None:
    fake.queue.push(SSEReply(["hello"], headers={"Content-Type": "text/plain"}))
    error, _ = await run_until_error(fake.model())
    assert "did not answer with an event stream" in error.message and "text/plain" in error.message


async def test_a_whole_json_message_is_read_too(fake: Fake) -> None:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s1"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_j", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }  # fmt: skip
    fake.queue.push(JSONReply(200, message))
    result = await run(fake.model())
    assert result.message.content == "Calling."
    assert result.message.reasoning_blocks == [ReasoningBlock("hm", "s1")]
    assert calls_of(result.message) == [("toolu_j", "weather", {"city": "Oslo"})]
    assert result.finish_reasons == ["tool_calls"] and result.usage == [Usage(7, 3, 10)]
