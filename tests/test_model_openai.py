"""OpenAIChatModel against a real HTTP server (the fake Chat Completions
server on 127.0.0.1): captured streams of real providers, retries, errors,
cancellation and the request body."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.model import (
    ChatChunk,
    ChatRequest,
    FailureCause,
    MessageBuilder,
    ModelError,
    ModelSettings,
    ReasoningEffort,
)
from pilothouse.runtime.model.openai import (
    OpenAIChatModel,
    build_request_body,
    parse_retry_after,
    parse_usage,
)
from pilothouse.runtime.tools import ToolSpec
from pilothouse.testmodel import (
    ChatCompletionsServer,
    ChunkFactory,
    Cut,
    Delay,
    JSONReply,
    Pause,
    QueueResponder,
    Raw,
    SSEReply,
    cut_reply,
    empty_reply,
    error_in_stream_reply,
    text_reply,
    tool_calls_reply,
)
from tests.conftest import wait_until

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures" / "sse"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"captured streams not found at {FIXTURES}"
)

REQUEST = ChatRequest(model="fake-model", messages=[Message.user("hi")])


@dataclass
class Fake:
    """A running fake server with its queue, and a factory of models
    pointed at it (closed at teardown)."""

    server: ChatCompletionsServer
    queue: QueueResponder
    url: str
    models: list[OpenAIChatModel] = field(default_factory=list)

    def model(self, **options: Any) -> OpenAIChatModel:
        settings: dict[str, Any] = {"retry_base_delay": 0.0, "max_retries": 2}
        settings.update(options)
        model = OpenAIChatModel(base_url=self.url, **settings)
        self.models.append(model)
        return model


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[Fake]:
    queue = QueueResponder()
    server = ChatCompletionsServer(queue)
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


async def run(model: OpenAIChatModel, request: ChatRequest = REQUEST) -> Round:
    builder = MessageBuilder()
    chunks: list[ChatChunk] = []
    async for chunk in model.stream(request):
        chunks.append(chunk)
        builder.accept(chunk)
    return Round(builder.build(), chunks)


async def run_until_error(
    model: OpenAIChatModel, request: ChatRequest = REQUEST
) -> tuple[ModelError, list[ChatChunk]]:
    chunks: list[ChatChunk] = []
    with pytest.raises(ModelError) as caught:
        async for chunk in model.stream(request):
            chunks.append(chunk)
    return caught.value, chunks


def carries_something(chunk: ChatChunk) -> bool:
    return bool(
        chunk.content or chunk.reasoning or chunk.tool_calls or chunk.finish_reason or chunk.usage
    )


def call_arguments(calls: list[ToolCall]) -> list[tuple[str, str, Any]]:
    return [(c.id, c.name, json.loads(c.arguments)) for c in calls]


# --- captured streams of real providers ------------------------------------------------------


def check_azure_text(r: Round) -> None:
    assert r.message.content == (
        "Why did the Opentelemetry developer bring a ladder to the coding competition? "
        "\n\nBecause they wanted to reach new traces!"
    )
    assert r.finish_reasons == ["stop"]
    assert r.usage == []
    # The prompt_filter_results event has model "" and carries nothing: not yielded.
    assert r.models == {"gpt-35-turbo"}


def check_deepseek(r: Round) -> None:
    assert r.message.content == "Hello there! 😊 How can I help you today?"
    assert r.message.reasoning_content.startswith('Hmm, the user just said "Hello".')
    assert r.message.reasoning_content.endswith("and that's okay too.")
    assert r.finish_reasons == ["stop"]
    assert r.usage == [Usage(6, 212, 218, cached_tokens=0, reasoning_tokens=198)]
    # Usage arrives on the finish chunk itself.
    finish = next(c for c in r.chunks if c.finish_reason)
    assert finish.usage == r.usage[0]
    assert r.models == {"deepseek-reasoner"}


def check_llamacpp(r: Round) -> None:
    assert r.message.content == "Olá!"
    assert r.message.reasoning_content.startswith('The user: "Say hi in Portuguese".')
    assert r.message.reasoning_content.endswith("We'll respond.")
    assert r.finish_reasons == ["stop"]
    assert r.usage == [Usage(84, 57, 141)]
    assert r.models == {"openai/gpt-oss-20b"}


def check_ollama_tools(r: Round) -> None:
    assert r.message.content == ""
    assert call_arguments(r.message.tool_calls) == [
        ("call_809l7n8f", "run_command", {"command": "ls -la"}),
        ("call_oqp1e2a1", "run_command", {"command": "ls -la", "cwd": "/path/to/directory"}),
    ]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == []


def check_ollama_text(r: Round) -> None:
    assert r.message.content == "My name is Neo Vim."
    assert r.finish_reasons == ["stop"]
    assert r.usage == []
    assert r.models == {"qwen2.5-coder:7b-instruct-q8_0"}


def check_finish_length(r: Round) -> None:
    assert r.message.content == '{"'
    assert r.finish_reasons == ["length"]
    assert r.usage == [Usage(79, 1, 80)]


def check_nonstream(r: Round) -> None:
    # A server that ignores `stream: true` and answers with one JSON body.
    assert call_arguments(r.message.tool_calls) == [
        ("call_fifE5poZ3dg3JDUKGFi48NGq", "add", {"a": 2, "b": 3}),
        ("call_cvvIly4eGLZUYOMhAviT8jAF", "multiply", {"a": 2, "b": 3}),
    ]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == [Usage(110, 50, 160)]


def check_openai_parallel(r: Round) -> None:
    assert r.message.content == ""
    assert call_arguments(r.message.tool_calls) == [
        (
            "call_JMW1whyEaYG438VE1OIflxA2",
            "GetWeatherArgs",
            {"city": "Edinburgh", "country": "GB", "units": "c"},
        ),
        (
            "call_DNYTawLBoN8fj3KN6qU9N1Ou",
            "get_stock_price",
            {"ticker": "AAPL", "exchange": "NASDAQ"},
        ),
    ]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == [Usage(149, 60, 209)]


def check_refusal(r: Round) -> None:
    assert r.message.content == "I'm sorry, I can't assist with that request."
    assert r.finish_reasons == ["stop"]
    assert r.usage == [Usage(79, 11, 90)]


def check_single_fragmented(r: Round) -> None:
    assert call_arguments(r.message.tool_calls) == [
        ("call_CTf1nWJLqSeRgDqaCG27xZ74", "get_weather", {"city": "San Francisco", "state": "CA"})
    ]
    assert sum(1 for c in r.chunks if c.tool_calls) == 11
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == [Usage(48, 19, 67)]


def check_openai_text(r: Round) -> None:
    assert r.message.content == (
        "I'm unable to provide real-time weather updates. To get the current weather in "
        "San Francisco, I recommend checking a reliable weather website or a weather app."
    )
    assert r.message.tool_calls == []
    assert r.finish_reasons == ["stop"]
    assert r.usage == [Usage(14, 30, 44)]
    assert r.models == {"gpt-4o-2024-08-06"}


def check_groq_error(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert "tool_use_failed" in error.message
    assert "Tool call validation failed" in error.message
    assert "groq" in error.message
    assert error.code == "tool_use_failed"
    assert error.status_code == 400
    assert not error.retryable
    reasoning = "".join(c.reasoning or "" for c in chunks)
    assert reasoning.startswith("We need to call")


def check_azure_404(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.status_code == 404
    assert error.code == "DeploymentNotFound"
    assert "HTTP 404" in error.message
    assert "The API deployment for this resource does not exist" in error.message
    assert not error.retryable


def check_openai_400(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.status_code == 400
    assert error.code == "invalid_image_url"
    assert "HTTP 400" in error.message
    assert "Error while downloading https://source.unsplash.com/8xznAGy4HcY" in error.message
    assert not error.retryable


def check_openrouter_429(error: ModelError, chunks: list[ChatChunk]) -> None:
    assert error.status_code == 429
    assert error.code == "429"
    assert "HTTP 429" in error.message
    assert "Provider returned error" in error.message
    assert "temporarily rate-limited upstream" in error.message
    assert error.retryable


Success = Callable[[Round], None]
Failure = Callable[[ModelError, list[ChatChunk]], None]

# file -> (HTTP status for JSON bodies, provider name, check)
CAPTURES: dict[str, tuple[int, str, Success | Failure, bool]] = {
    "azure_prompt_filter_results_text_stream.sse": (200, "azure", check_azure_text, True),
    "deepseek_reasoning_content_stream.sse": (200, "deepseek", check_deepseek, True),
    "llamacpp_text_stream_with_reasoning_and_timings.sse": (200, "llamacpp", check_llamacpp, True),
    "ollama_parallel_tool_calls_whole_args_RECONSTRUCTED_FRAMING.sse": (
        200,
        "ollama",
        check_ollama_tools,
        True,
    ),
    "ollama_text_stream_RECONSTRUCTED_FRAMING.sse": (200, "ollama", check_ollama_text, True),
    "openai_finish_length.sse": (200, "openai", check_finish_length, True),
    "openai_nonstream_parallel_tool_calls.json": (200, "openai", check_nonstream, True),
    "openai_parallel_tool_calls.sse": (200, "openai", check_openai_parallel, True),
    "openai_refusal_stream.sse": (200, "openai", check_refusal, True),
    "openai_single_tool_call_fragmented_args.sse": (
        200,
        "openai",
        check_single_fragmented,
        True,
    ),
    "openai_text_stream_with_usage.sse": (200, "openai", check_openai_text, True),
    "groq_event_error_no_done.sse": (200, "groq", check_groq_error, False),
    "azure_error_404_deployment_not_found.json": (404, "azure", check_azure_404, False),
    "openai_error_400_invalid_image_url.json": (400, "openai", check_openai_400, False),
    "openrouter_error_429_RESERIALIZED.json": (429, "openrouter", check_openrouter_429, False),
}


@needs_fixtures
def test_every_capture_has_a_check() -> None:
    present = {p.name for p in FIXTURES.iterdir() if p.suffix in (".sse", ".json")}
    assert present == set(CAPTURES)


@needs_fixtures
@pytest.mark.parametrize("name", sorted(CAPTURES))
async def test_replay_capture(fake: Fake, name: str) -> None:
    status, provider, check, succeeds = CAPTURES[name]
    path = FIXTURES / name
    if path.suffix == ".sse":
        fake.queue.push(SSEReply.from_file(path))
    else:
        fake.queue.push(JSONReply.from_file(path, status))
    model = fake.model(provider_name=provider, max_retries=0)
    if succeeds:
        result = await run(model)
        assert all(carries_something(c) for c in result.chunks)
        check(result)  # type: ignore[call-arg]
    else:
        error, chunks = await run_until_error(model)
        assert provider in error.message
        check(error, chunks)  # type: ignore[call-arg]
    assert len(fake.server.requests) == 1


@needs_fixtures
async def test_capture_replay_with_gaps_between_events(fake: Fake) -> None:
    fake.queue.push(SSEReply.from_file(FIXTURES / "openai_parallel_tool_calls.sse", delay=0.001))
    check_openai_parallel(await run(fake.model()))


# --- the protocol beyond the captures --------------------------------------------------------


async def test_fragmented_arguments_are_assembled(fake: Fake) -> None:
    args = json.dumps({"path": "/tmp/a file.txt", "lines": [1, 2, 3], "nested": {"k": "v"}})
    fake.queue.push(tool_calls_reply([("call_a", "read_file", args)], fragment_size=3))
    result = await run(fake.model())
    assert call_arguments(result.message.tool_calls) == [("call_a", "read_file", json.loads(args))]
    fragments = [d.arguments for c in result.chunks for d in c.tool_calls if d.arguments]
    assert len(fragments) == -(-len(args) // 3)
    assert result.finish_reasons == ["tool_calls"]


async def test_parallel_calls_interleaved_are_assembled_by_index(fake: Fake) -> None:
    f = ChunkFactory("fake-model")
    events: list[Any] = [
        f.role(None),
        f.chunk({"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                                 "function": {"name": "first", "arguments": ""}}]}),
        f.chunk({"tool_calls": [{"index": 1, "id": "c1", "type": "function",
                                 "function": {"name": "second", "arguments": '{"b"'}}]}),
        f.chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
        f.chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}},
                                {"index": 0, "function": {"arguments": "1}"}}]}),
        f.chunk({}, finish_reason="tool_calls"),
        "[DONE]",
    ]  # fmt: skip
    fake.queue.push(SSEReply(events))
    result = await run(fake.model())
    assert call_arguments(result.message.tool_calls) == [
        ("c0", "first", {"a": 1}),
        ("c1", "second", {"b": 2}),
    ]


async def test_whole_arguments_in_one_chunk(fake: Fake) -> None:
    calls = [("call_1", "a", '{"x": 1}'), ("call_2", "b", '{"y": [true]}'), ("call_3", "c", "{}")]
    fake.queue.push(tool_calls_reply(calls, fragment_size=None, text="Let me check."))
    result = await run(fake.model())
    assert result.message.content == "Let me check."
    assert call_arguments(result.message.tool_calls) == [
        ("call_1", "a", {"x": 1}),
        ("call_2", "b", {"y": [True]}),
        ("call_3", "c", {}),
    ]
    assert [d.index for c in result.chunks for d in c.tool_calls] == [0, 1, 2]


async def test_tool_calls_without_index_are_keyed_by_id(fake: Fake) -> None:
    f = ChunkFactory()
    events: list[Any] = [
        f.chunk({"tool_calls": [{"id": "x", "function": {"name": "one", "arguments": "{}"}},
                                {"id": "y", "function": {"name": "two", "arguments": '{"n":'}}]}),
        f.chunk({"tool_calls": [{"function": {"arguments": " 2}"}}]}),
        f.chunk({}, finish_reason="tool_calls"),
        "[DONE]",
    ]  # fmt: skip
    fake.queue.push(SSEReply(events))
    result = await run(fake.model())
    assert call_arguments(result.message.tool_calls) == [("x", "one", {}), ("y", "two", {"n": 2})]


async def test_comments_repeated_roles_and_empty_content_yield_nothing_extra(fake: Fake) -> None:
    f = ChunkFactory("m-1")
    events: list[Any] = [
        ": OPENROUTER PROCESSING",
        f.chunk({"role": "assistant", "content": ""}),
        ": keep-alive",
        f.chunk({"role": "assistant", "content": "Hel"}),
        f.chunk({"role": "assistant", "content": ""}),
        f.chunk({"role": "assistant", "content": "lo"}),
        f.chunk({"role": "assistant", "content": ""}, finish_reason="stop"),
        "[DONE]",
    ]
    fake.queue.push(SSEReply(events))
    result = await run(fake.model())
    assert [(c.content, c.finish_reason) for c in result.chunks] == [
        ("Hel", None),
        ("lo", None),
        (None, "stop"),
    ]
    assert result.models == {"m-1"}


async def test_reasoning_key_and_refusal_and_usage_details(fake: Fake) -> None:
    f = ChunkFactory()
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    events: list[Any] = [
        f.chunk({"reasoning": "think "}),
        f.chunk({"reasoning_content": "more"}),
        f.chunk({"refusal": "No."}),
        f.chunk({}, finish_reason="stop", usage=usage),
        "[DONE]",
    ]
    fake.queue.push(SSEReply(events))
    result = await run(fake.model())
    assert result.message.reasoning_content == "think more"
    assert result.message.content == "No."
    assert result.usage == [Usage(100, 40, 140, cached_tokens=64, reasoning_tokens=12)]


def test_parse_usage_shapes() -> None:
    assert parse_usage(None) is None
    assert parse_usage({}) is None
    deepseek = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_cache_hit_tokens": 7,
        "prompt_cache_miss_tokens": 3,
    }
    assert parse_usage(deepseek) == Usage(10, 5, 15, cached_tokens=7)
    assert parse_usage({"prompt_tokens": 3, "completion_tokens": 4}) == Usage(3, 4, 7)
    nulls = {
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert parse_usage(nulls) == Usage(1, 1, 2)


async def test_finish_reason_without_done_is_accepted(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "ok"}), f.chunk({}, finish_reason="stop")]))
    result = await run(fake.model())
    assert result.message.content == "ok"
    assert result.finish_reasons == ["stop"]


async def test_finish_reason_then_connection_lost_is_accepted(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "ok"}, finish_reason="stop"), Cut()]))
    result = await run(fake.model())
    assert result.message.content == "ok"


async def test_empty_reply_finishes_with_stop(fake: Fake) -> None:
    fake.queue.push(empty_reply())
    result = await run(fake.model())
    assert result.message.content == ""
    assert [(c.content, c.finish_reason) for c in result.chunks] == [(None, "stop")]


# --- errors ----------------------------------------------------------------------------------


async def test_stream_cut_raises_and_is_not_retried(fake: Fake) -> None:
    fake.queue.push(cut_reply("partial answer"))
    error, chunks = await run_until_error(fake.model(max_retries=3))
    assert error.message.startswith("model stream ended before completion")
    assert "RemoteProtocolError" in error.message
    assert error.retryable
    assert "".join(c.content or "" for c in chunks) == "partial answer"
    assert len(fake.server.requests) == 1


async def test_stream_ending_without_finish_or_done_raises(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.role(), f.chunk({"content": "half"})]))
    error, chunks = await run_until_error(fake.model())
    assert error.message.startswith("model stream ended before completion")
    assert "without a finish_reason or [DONE]" in error.message
    assert [c.content for c in chunks] == ["half"]


@pytest.mark.parametrize("with_event", [False, True])
async def test_error_object_in_stream(fake: Fake, with_event: bool) -> None:
    fake.queue.push(
        error_in_stream_reply(
            "partial", message="Upstream overloaded", code="overloaded_error", event=with_event
        )
    )
    error, chunks = await run_until_error(fake.model(provider_name="acme"))
    assert "acme reported an error in the stream: Upstream overloaded" in error.message
    assert "overloaded_error" in error.message
    assert error.code == "overloaded_error"
    assert error.status_code is None
    assert "".join(c.content or "" for c in chunks) == "partial"
    assert len(fake.server.requests) == 1


async def test_openrouter_style_error_chunk_with_numeric_code(fake: Fake) -> None:
    f = ChunkFactory()
    error_chunk = {
        "id": f.id,
        "object": "chat.completion.chunk",
        "error": {"code": 502, "message": "Provider disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), error_chunk]))
    error, _ = await run_until_error(fake.model())
    assert "Provider disconnected" in error.message
    assert error.code == "502"
    assert error.status_code == 502
    assert error.retryable


async def test_non_json_error_body(fake: Fake) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    fake.queue.push(JSONReply(502, html, headers={"Content-Type": "text/html"}))
    error, _ = await run_until_error(fake.model(max_retries=0))
    assert error.status_code == 502
    assert error.code is None
    assert "HTTP 502" in error.message
    assert "502 Bad Gateway" in error.message
    assert error.retryable


async def test_non_event_stream_200_is_an_error(fake: Fake) -> None:
    fake.queue.push(SSEReply(["hello"], headers={"Content-Type": "text/plain"}))
    error, _ = await run_until_error(fake.model())
    assert "did not answer with an event stream" in error.message
    assert "text/plain" in error.message


# --- retries ---------------------------------------------------------------------------------


def rate_limited(headers: dict[str, str]) -> JSONReply:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}
    return JSONReply(429, body, headers)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"Retry-After": "0.3"}, 0.3), ({"retry-after-ms": "250"}, 0.25)],
)
async def test_429_retry_after_is_honoured(
    fake: Fake, headers: dict[str, str], wait: float
) -> None:
    fake.queue.push(rate_limited(headers), text_reply("done"))
    model = fake.model(max_retries=2, retry_base_delay=0.0)
    started = time.monotonic()
    result = await run(model)
    elapsed = time.monotonic() - started
    assert result.message.content == "done"
    assert len(fake.server.requests) == 2
    assert fake.server.requests[0] == fake.server.requests[1]
    # With no base delay, only the header can account for the wait.
    assert elapsed >= wait


async def test_retry_after_is_capped_by_retry_max_delay(fake: Fake) -> None:
    fake.queue.push(rate_limited({"Retry-After": "3600"}), text_reply("done"))
    model = fake.model(retry_max_delay=0.01)
    started = time.monotonic()
    result = await run(model)
    assert result.message.content == "done"
    assert time.monotonic() - started < 5


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0


async def test_500_exhausts_retries(fake: Fake) -> None:
    body = {"error": {"message": "The server had an error", "type": "server_error", "code": None}}
    fake.queue.push(*(JSONReply(500, body) for _ in range(3)))
    error, _ = await run_until_error(fake.model(max_retries=2))
    assert error.retryable
    assert error.status_code == 500
    assert error.code == "server_error"
    assert "HTTP 500: The server had an error" in error.message
    assert "gave up after 3 attempts" in error.message
    assert len(fake.server.requests) == 3
    assert fake.queue.remaining == 0


async def test_400_is_not_retried(fake: Fake) -> None:
    body = {"error": {"message": "bad tools", "type": "invalid_request_error", "code": None}}
    fake.queue.push(JSONReply(400, body), text_reply("never"))
    error, _ = await run_until_error(fake.model(max_retries=3))
    assert not error.retryable
    assert error.status_code == 400
    assert error.code == "invalid_request_error"
    assert len(fake.server.requests) == 1


async def test_non_retryable_error_after_a_retry_is_reported_as_is(fake: Fake) -> None:
    body = {"error": {"message": "model not found", "type": "invalid_request_error"}}
    fake.queue.push(rate_limited({"retry-after-ms": "1"}), JSONReply(404, body))
    error, _ = await run_until_error(fake.model(max_retries=3))
    assert error.status_code == 404
    assert error.message == (
        "openai returned HTTP 404: model not found (code invalid_request_error)"
        f" [host 127.0.0.1:{fake.server.port}]"
    )
    assert len(fake.server.requests) == 2


async def test_connection_dropped_before_response_is_retried(fake: Fake) -> None:
    fake.queue.push(SSEReply([Cut()]), text_reply("second try"))
    result = await run(fake.model())
    assert result.message.content == "second try"
    assert len(fake.server.requests) == 2


async def test_connection_dropped_before_first_body_byte_is_retried(fake: Fake) -> None:
    # Headers go out, then the connection drops before any body byte.
    fake.queue.push(SSEReply([Delay(0), Cut()]), text_reply("second try"))
    result = await run(fake.model())
    assert result.message.content == "second try"
    assert len(fake.server.requests) == 2


async def test_connection_refused_is_retryable(fake: Fake) -> None:
    closed = ChatCompletionsServer(QueueResponder())
    url = await closed.start()
    await closed.stop()
    model = OpenAIChatModel(base_url=url, max_retries=1, retry_base_delay=0.0)
    try:
        error, _ = await run_until_error(model)
    finally:
        await model.aclose()
    assert error.retryable
    assert "could not reach openai" in error.message
    assert "ConnectError" in error.message
    assert "gave up after 2 attempts" in error.message


async def test_read_timeout_before_first_byte(fake: Fake) -> None:
    fake.queue.push(SSEReply([Delay(2.0), "[DONE]"]))
    error, _ = await run_until_error(fake.model(read_timeout=0.2, max_retries=0))
    assert error.retryable
    assert "ReadTimeout" in error.message


async def test_read_timeout_mid_stream_is_not_retried(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), Delay(2.0), "[DONE]"]))
    error, chunks = await run_until_error(fake.model(read_timeout=0.2, max_retries=3))
    assert error.message.startswith("model stream ended before completion")
    assert "sent nothing for 0.2s" in error.message
    assert error.retryable
    assert [c.content for c in chunks] == ["a"]
    assert len(fake.server.requests) == 1


# --- the request -----------------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
TOOL_SPEC = ToolSpec("get_weather", "", {"type": "object", "properties": {}})


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
async def test_request_body_tool_choice(fake: Fake, tool_choice: str, expected: Any) -> None:
    fake.queue.push(empty_reply())
    request = ChatRequest(
        model="gpt-x",
        messages=[Message.user("u")],
        system="s",
        tools=[TOOL_SPEC],
        tool_choice=tool_choice,
        settings=ModelSettings(reasoning_effort=ReasoningEffort.LOW),
    )
    await run(fake.model(), request)
    [body] = fake.server.requests
    assert body == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [TOOL],
        "tool_choice": expected,
        "reasoning_effort": "low",
    }


async def test_request_body_minimal_and_headers(fake: Fake) -> None:
    fake.queue.push(empty_reply())
    model = fake.model(api_key="sk-test", extra_headers={"X-Title": "pilothouse-tests"})
    await run(model)
    [body] = fake.server.requests
    assert body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    [headers] = fake.server.request_headers
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["X-Title"] == "pilothouse-tests"
    assert headers["Accept"] == "text/event-stream"


async def test_no_authorization_without_api_key(fake: Fake) -> None:
    fake.queue.push(empty_reply())
    await run(fake.model())
    assert "Authorization" not in fake.server.request_headers[0]


def test_build_request_body_leaves_out_unset_options() -> None:
    body = build_request_body(ChatRequest(model="m", messages=[], tools=[], tool_choice=None))
    assert set(body) == {"model", "messages", "stream", "stream_options"}


# --- cancellation ----------------------------------------------------------------------------


async def test_aclose_closes_the_response(fake: Fake) -> None:
    hold = asyncio.Event()
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "first"}), Pause(hold), "[DONE]"]))
    stream = fake.model().stream(REQUEST)
    first = await anext(stream)
    assert first.content == "first"
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(fake.server.disconnected.wait(), 5)
    assert fake.server.disconnects == 1


async def test_cancelled_consumer_closes_the_response(fake: Fake) -> None:
    hold = asyncio.Event()
    got_first = asyncio.Event()
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "first"}), Pause(hold), "[DONE]"]))
    model = fake.model()

    async def consume() -> None:
        async with contextlib.aclosing(model.stream(REQUEST)) as stream:
            async for _ in stream:
                got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.server.disconnected.wait(), 5)
    assert fake.server.disconnects == 1


# --- found by replaying more real captures ---------------------------------------------------


async def test_byte_order_mark_at_the_start_is_stripped(fake: Fake) -> None:
    # The BOM used to glue onto the first field name ("\ufeffdata"), and
    # the first event, here a whole tool call, was silently lost.
    f = ChunkFactory()
    first = f.chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                     "function": {"name": "now", "arguments": "{}"}}]})  # fmt: skip
    fake.queue.push(
        SSEReply([
            Raw(b"\xef\xbb\xbf" + f"data: {first}\n\n".encode()),
            f.chunk({}, finish_reason="tool_calls"),
            "[DONE]",
        ])
    )  # fmt: skip
    result = await run(fake.model())
    assert call_arguments(result.message.tool_calls) == [("c1", "now", {})]


async def test_content_type_is_compared_case_insensitively(fake: Fake) -> None:
    fake.queue.push(
        SSEReply(text_reply("ok").events, headers={"Content-Type": "Text/Event-Stream; Charset=UTF-8"})
    )
    assert (await run(fake.model())).message.content == "ok"


async def test_events_without_data_are_not_dispatched(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(
        SSEReply([
            "event: error", "",  # an event type and nothing else: no event at all
            "id: 7", "",
            "retry: 100", "",
            f.chunk({"content": "fine"}, finish_reason="stop"),
            "[DONE]",
        ])
    )  # fmt: skip
    result = await run(fake.model())
    assert result.message.content == "fine"


async def test_usage_beside_an_error_is_kept(fake: Fake) -> None:
    f = ChunkFactory()
    error_chunk = {
        "id": f.id,
        "object": "chat.completion.chunk",
        "error": {"message": "upstream timed out", "code": 504},
        "usage": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128},
        "choices": [],
    }
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), error_chunk]))
    error, chunks = await run_until_error(fake.model())
    assert error.usage == Usage(120, 8, 128)
    assert all(c.usage is None for c in chunks)
    assert error.retryable and error.mid_stream and error.status_code == 504


async def test_reasoning_goes_back_with_the_tool_calls_it_led_to(fake: Fake) -> None:
    # DeepSeek's thinking mode answers 400 when an assistant message with
    # tool calls comes back without its reasoning_content.
    fake.queue.push(empty_reply())
    history = [
        Message.user("time?"),
        Message(Role.ASSISTANT, "", reasoning_content="I should call now.",
                tool_calls=[ToolCall("c1", "now", "{}")]),
        Message.tool("12:00", "c1", "now"),
        Message(Role.ASSISTANT, "Noon.", reasoning_content="Easy."),
        Message.user("thanks"),
    ]
    await run(fake.model(), ChatRequest(model="deepseek-chat", messages=history))
    [body] = fake.server.requests
    assert body["messages"] == [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "reasoning_content": "I should call now.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "assistant", "content": "Noon."},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    fake.queue.push(empty_reply())
    await run(fake.model(send_reasoning=False), ChatRequest(model="m", messages=history))
    assert "reasoning_content" not in fake.server.requests[1]["messages"][1]


async def test_a_body_kept_open_after_done_does_not_delay_the_round(fake: Fake) -> None:
    hold = asyncio.Event()
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "ok"}, finish_reason="stop"), "[DONE]", Pause(hold)]))
    model = fake.model()
    result = await run(model)
    assert result.message.content == "ok"
    # The round is over while the server still holds the body open: the
    # rest is read in the background, not waited for (nor cut).
    assert fake.server.disconnects == 0
    assert model.http._drains
    hold.set()
    await wait_until(lambda: not model.http._drains)
    assert fake.server.disconnects == 0


async def test_model_settings_in_the_request(fake: Fake) -> None:
    fake.queue.push(empty_reply())
    settings = ModelSettings(
        temperature=0.2, top_p=0.5, max_tokens=300, stop=("###",), parallel_tool_calls=False,
        reasoning_effort=ReasoningEffort.MEDIUM,
    )  # fmt: skip
    request = ChatRequest("m", [Message.user("u")], tools=[TOOL_SPEC], settings=settings)
    await run(fake.model(), request)
    [body] = fake.server.requests
    assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "stop",
                                 "parallel_tool_calls", "reasoning_effort")} == {
        "temperature": 0.2, "top_p": 0.5, "max_tokens": 300, "stop": ["###"],
        "parallel_tool_calls": False, "reasoning_effort": "medium",
    }  # fmt: skip
    assert "tool_choice" not in body
    # OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens).
    assert OpenAIChatModel(base_url="https://api.openai.com/v1").max_tokens_field == (
        "max_completion_tokens"
    )


# --- timeouts and failure signals ------------------------------------------------------------


async def test_keep_alive_comments_for_ever_end_at_the_idle_timeout(fake: Fake) -> None:
    """Comments keep bytes coming but are no events: a stream of nothing
    else ends after the idle timeout (the fault suite found one that never
    did)."""
    f = ChunkFactory()
    comments: list = [": keep-alive", Delay(0.05)] * 200
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), *comments, "[DONE]"]))
    error, chunks = await run_until_error(fake.model(read_timeout=5.0, idle_timeout=0.3, max_retries=0))
    assert [c.content for c in chunks] == ["a"]
    assert "sent nothing for 0.3s" in error.message
    assert error.cause is FailureCause.IDLE_TIMEOUT


async def test_idle_timeout_mid_stream(fake: Fake) -> None:
    f = ChunkFactory()
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), Delay(2.0), "[DONE]"]))
    error, chunks = await run_until_error(fake.model(read_timeout=5.0, idle_timeout=0.2, max_retries=3))
    assert [c.content for c in chunks] == ["a"]
    assert "sent nothing for 0.2s" in error.message
    assert error.cause is FailureCause.IDLE_TIMEOUT
    assert error.mid_stream and error.retryable
    assert len(fake.server.requests) == 1


async def test_first_byte_and_idle_limits_are_distinct(fake: Fake) -> None:
    f = ChunkFactory()
    # A pause mid-stream longer than the first-byte limit but within the idle one.
    fake.queue.push(SSEReply([f.chunk({"content": "a"}), Delay(0.4), f.chunk({}, finish_reason="stop")]))
    model = fake.model(read_timeout=0.1, idle_timeout=5.0, max_retries=1)
    assert (await run(model)).message.content == "a"
    # The same wait before the first byte is a first-byte timeout, retried.
    fake.queue.push(SSEReply([Delay(0.4), "[DONE]"]), text_reply("second"))
    assert (await run(model)).message.content == "second"
    assert len(fake.server.requests) == 3


async def test_first_byte_timeout_is_not_mid_stream(fake: Fake) -> None:
    fake.queue.push(SSEReply([Delay(2.0), "[DONE]"]))
    error, _ = await run_until_error(fake.model(read_timeout=0.2, idle_timeout=5.0, max_retries=0))
    assert error.cause is FailureCause.READ_TIMEOUT
    assert not error.mid_stream and error.retryable


async def test_failure_signals(fake: Fake) -> None:
    fake.queue.push(cut_reply("partial"))
    error, _ = await run_until_error(fake.model(max_retries=0))
    assert (error.cause, error.mid_stream, error.retryable) == (
        FailureCause.CONNECTION_RESET, True, True,
    )  # fmt: skip
    assert error.provider == "openai"
    fake.queue.push(JSONReply(503, {"error": {"message": "busy"}}))
    error, _ = await run_until_error(fake.model(max_retries=0))
    assert (error.cause, error.mid_stream, error.retryable) == (FailureCause.OVERLOADED, False, True)
    fake.queue.push(error_in_stream_reply("x", message="boom", code="server_error"))
    error, _ = await run_until_error(fake.model(max_retries=0))
    assert (error.cause, error.mid_stream, error.retryable) == (FailureCause.ERROR_EVENT, True, True)
