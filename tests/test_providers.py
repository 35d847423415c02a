"""Named providers: settings, the router's rules, and runs through the
runtime over real gRPC on the fake OpenAI-compatible and Anthropic servers
(the conftest `app` has the fake Anthropic server as provider `anthropic`):
thinking with its signature sent back, model settings, per-run overrides,
DeepSeek's reasoning_content, an unknown provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pydantic
import pytest

from pilothouse.app.models import ProviderConfigError, build_router
from pilothouse.app.settings import Settings, load_settings
from pilothouse.app.startup import StartupError, start_app
from pilothouse.client import PilothouseRpcError
from pilothouse.errors import FailedPreconditionError
from pilothouse.runtime.model.anthropic import AnthropicChatModel
from pilothouse.runtime.model.openai import OpenAIChatModel
from pilothouse.runtime.model.router import ModelRouter
from pilothouse.testmodel import ChunkFactory, JSONReply, SSEReply, text_reply, tool_calls_reply
from pilothouse.testmodel.anthropic import (
    anthropic_error_event_reply,
    anthropic_text_reply,
    anthropic_tool_use_reply,
)
from pilothouse.v1 import agent_pb2, agent_service_pb2, event_pb2, run_service_pb2
from tests.conftest import ANTHROPIC_KEY, app_settings, assert_valid_history, collect, kinds

CLAUDE = "anthropic/claude-fake-1"


# --- the router ------------------------------------------------------------------------------


async def test_router_rules() -> None:
    default = OpenAIChatModel(base_url="http://127.0.0.1:9/v1")
    claude = AnthropicChatModel(base_url="http://127.0.0.1:9")
    alone = ModelRouter(default, default_model="gpt-x")
    router = ModelRouter(default, {"claude": claude}, default_model="meta-llama/Llama-3.1-8B")
    try:
        # Without named providers every name is the default provider's, as is.
        assert alone.resolve("meta-llama/Llama-3.1-8B") == (default, "meta-llama/Llama-3.1-8B")
        assert router.resolve("claude/claude-sonnet-4-5") == (claude, "claude-sonnet-4-5")
        assert router.resolve("default/org/model") == (default, "org/model")
        assert router.resolve("gpt-4o") == (default, "gpt-4o")
        # The default model belongs to the default provider, slash or not.
        assert router.resolve("meta-llama/Llama-3.1-8B") == (default, "meta-llama/Llama-3.1-8B")
        with pytest.raises(FailedPreconditionError) as caught:
            router.check_model("cluade/claude-sonnet-4-5")
        assert caught.value.reason == "UNKNOWN_MODEL_PROVIDER"
        assert caught.value.metadata == {
            "model": "cluade/claude-sonnet-4-5", "provider": "cluade", "providers": "default,claude",
        }  # fmt: skip
        with pytest.raises(ValueError, match="default"):
            ModelRouter(default, {"default": claude})
    finally:
        await router.aclose()
        await alone.aclose()


# --- settings --------------------------------------------------------------------------------


def test_providers_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PILOTHOUSE_PROVIDERS", raising=False)
    config = tmp_path / "pilothouse.toml"
    config.write_text(
        'model_idle_timeout = 30\n'
        '[[providers]]\nname = "anthropic"\nkind = "anthropic"\napi_key_env = "MY_ANTHROPIC_KEY"\n'
        'read_timeout = 300\nheaders = { "anthropic-beta" = "interleaved-thinking-2025-05-14" }\n'
        '[[providers]]\nname = "deepseek"\nbase_url = "https://api.deepseek.com"\n'
        'api_key_env = "DEEPSEEK_API_KEY"\nmax_retries = 5\n'
    )
    settings = load_settings(config)
    assert settings.model_idle_timeout == 30
    anthropic, deepseek = settings.providers
    assert (anthropic.name, anthropic.kind, anthropic.read_timeout) == ("anthropic", "anthropic", 300)
    assert anthropic.headers == {"anthropic-beta": "interleaved-thinking-2025-05-14"}
    assert (deepseek.kind, deepseek.base_url, deepseek.max_retries) == (
        "openai", "https://api.deepseek.com", 5,
    )  # fmt: skip


@pytest.mark.parametrize(
    "providers",
    [
        [{"name": "a"}, {"name": "a"}],
        [{"name": "default"}],
        [{"name": "x", "kind": "gemini"}],
        [{"name": "x", "api_key": "inline keys are not read"}],
    ],
)
def test_bad_providers(providers: list[dict[str, Any]]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(providers=providers)


def test_providers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PILOTHOUSE_PROVIDERS", '[{"name": "groq", "base_url": "https://api.groq.com/openai/v1"}]')
    assert [p.name for p in Settings().providers] == ["groq"]


async def test_an_unset_api_key_variable_is_a_startup_error(monkeypatch, model_server, tool_server) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    settings = app_settings(
        model_server, tool_server, providers=[{"name": "p", "kind": "anthropic", "api_key_env": "NO_SUCH_KEY"}]
    )
    with pytest.raises(ProviderConfigError, match="NO_SUCH_KEY"):
        build_router(settings, model_server.base_url, "fake-model")
    with pytest.raises(StartupError, match="environment variable NO_SUCH_KEY"):
        await start_app(settings)


async def test_an_agents_file_naming_an_unknown_provider_is_a_startup_error(
    tmp_path: Path, model_server, tool_server, anthropic_server
) -> None:
    from tests.conftest import anthropic_provider

    agents = tmp_path / "agents.toml"
    agents.write_text('[[agents]]\nname = "typo"\nmodel = "antropic/claude-sonnet-4-5"\n')
    settings = app_settings(
        model_server, tool_server, agents_file=agents, providers=[anthropic_provider(anthropic_server)]
    )
    with pytest.raises(StartupError, match="'antropic', which is not configured"):
        await start_app(settings)


def test_model_settings_in_the_agents_file(tmp_path: Path) -> None:
    from pilothouse.app.agents_file import read_agents_file
    from pilothouse.errors import InvalidArgumentError
    from pilothouse.runtime.model import ModelSettings, ReasoningEffort

    path = tmp_path / "agents.toml"
    path.write_text(
        '[[agents]]\nname = "tuned"\nmodel = "anthropic/claude-sonnet-4-5"\ntemperature = 0.2\n'
        'top_p = 0.9\nmax_tokens = 2000\nstop_sequences = ["END"]\nparallel_tool_calls = false\n'
        'reasoning_effort = "medium"\nfallback_model = "default/gpt-4o-mini"\n'
        '[[agents]]\nname = "old-style"\nthinking = true\n'
    )
    tuned, old_style = read_agents_file(path)
    assert tuned.request_settings() == ModelSettings(
        temperature=0.2, top_p=0.9, max_tokens=2000, stop=("END",), parallel_tool_calls=False,
        reasoning_effort=ReasoningEffort.MEDIUM,
    )  # fmt: skip
    assert tuned.fallback_model == "default/gpt-4o-mini"
    assert old_style.request_settings().reasoning_effort is ReasoningEffort.HIGH
    for bad, field in (
        ('reasoning_effort = "max"', "reasoning_effort"),
        ("temperature = 3", "temperature"),
        ('stop_sequences = [""]', "stop_sequences"),
    ):
        path.write_text(f'[[agents]]\nname = "bad"\n{bad}\n')
        with pytest.raises(InvalidArgumentError, match=rf"agents\[0\]\.{field}"):
            read_agents_file(path)


# --- runs on the Anthropic provider ----------------------------------------------------------


async def create_agent(client, **config: Any) -> str:
    config.setdefault("system_prompt", "Be brief.")
    await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(config=agent_pb2.AgentConfig(**config)), timeout=5
    )
    return config["name"]


async def test_anthropic_agent_thinks_calls_tools_and_answers(client, anthropic_model, fake_model) -> None:
    agent = await create_agent(
        client, name="claude-thinker", model=CLAUDE, tools=["calculate"],
        reasoning_effort=agent_pb2.REASONING_EFFORT_HIGH,
    )  # fmt: skip
    session = (await client.create_session(agent, "tester")).id
    anthropic_model.responder.push(
        anthropic_tool_use_reply(
            [("toolu_1", "calculate", '{"expression": "17 * 23"}')],
            thinking="I should compute it.", signature="U2lnbmVk",
        ),
        anthropic_text_reply("It is 391.", input_tokens=40, cache_read=30, cache_write=8),
    )  # fmt: skip
    events = await collect(client.stream_to(session, "What is 17 * 23?"))
    done = events[-1].done
    assert done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
    assert done.final_response == "It is 391."
    assert done.model == CLAUDE
    assert "".join(e.thinking_delta.text for e in events if e.HasField("thinking_delta")) == (
        "I should compute it."
    )
    [result] = [e.tool_result for e in events if e.HasField("tool_result")]
    assert (result.call_id, result.output) == ("toolu_1", "391")
    usages = [e.usage.usage for e in events if e.HasField("usage")]
    assert (usages[-1].prompt_tokens, usages[-1].cached_tokens, usages[-1].cache_write_tokens) == (78, 30, 8)

    first, second = anthropic_model.requests
    assert first["model"] == "claude-fake-1"  # the provider's prefix is not sent
    assert first["system"] == "Be brief."
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert first["tools"][0]["name"] == "calculate" and "input_schema" in first["tools"][0]
    assert second["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": "I should compute it.", "signature": "U2lnbmVk",
    }  # fmt: skip
    assert second["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "391"}
    ]
    assert anthropic_model.server.request_headers[0]["x-api-key"] == ANTHROPIC_KEY
    assert fake_model.requests == []  # the default provider was not asked
    messages = await client.list_messages(session)
    assert_valid_history(messages)
    assert [m.reasoning_content for m in messages][1] == "I should compute it."


async def test_anthropic_error_event_ends_the_run_with_valid_history(client, anthropic_model) -> None:
    agent = await create_agent(client, name="claude-flaky", model=CLAUDE)
    session = (await client.create_session(agent, "tester")).id
    failing = anthropic_error_event_reply("overloaded_error", "Overloaded", after_text="Hal")
    anthropic_model.responder.push(failing, failing, failing)  # the round and its two retries
    reply = await client.send_to(session, "hello")
    assert reply.response.stop_reason == event_pb2.STOP_REASON_ERROR
    assert "anthropic reported an error in the stream: Overloaded" in reply.response.error
    assert f"127.0.0.1:{anthropic_model.server.port}" in reply.response.error
    assert [m.content for m in await client.list_messages(session)] == ["hello"]


# --- unknown providers -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["model", "fallback_model"])
async def test_unknown_provider_fails_create_agent(client, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_agent(client, name=f"typo-{field.replace('_', '-')}", **{field: "antropic/claude-x"})
    error = PilothouseRpcError(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "UNKNOWN_MODEL_PROVIDER"
    assert error.metadata["provider"] == "antropic"
    assert error.metadata["providers"] == "default,anthropic"


# --- model settings and overrides ------------------------------------------------------------


async def test_model_settings_reach_each_provider(client, fake_model, anthropic_model) -> None:
    settings = {
        "temperature": 0.4, "top_p": 0.8, "max_tokens": 2000, "stop_sequences": ["STOP"],
        "parallel_tool_calls": False, "reasoning_effort": agent_pb2.REASONING_EFFORT_LOW,
    }  # fmt: skip
    await create_agent(client, name="tuned-openai", tools=["calculate"], **settings)
    await create_agent(client, name="tuned-claude", model=CLAUDE, tools=["calculate"], **settings)
    got = (await client.agents.GetAgent(agent_service_pb2.GetAgentRequest(name="tuned-openai"))).agent.config
    assert (got.temperature, got.top_p, got.max_tokens, list(got.stop_sequences)) == (0.4, 0.8, 2000, ["STOP"])
    assert got.HasField("parallel_tool_calls") and not got.parallel_tool_calls
    assert got.reasoning_effort == agent_pb2.REASONING_EFFORT_LOW
    await create_agent(client, name="untuned")
    plain = await client.agents.GetAgent(agent_service_pb2.GetAgentRequest(name="untuned"))
    assert not plain.agent.config.HasField("temperature")
    assert plain.agent.config.reasoning_effort == agent_pb2.REASONING_EFFORT_UNSPECIFIED

    fake_model.responder.push(text_reply("ok"))
    anthropic_model.responder.push(anthropic_text_reply("ok"))
    for agent in ("tuned-openai", "tuned-claude"):
        session = (await client.create_session(agent, "tester")).id
        assert (await client.send_to(session, "hi")).response.final_response == "ok"
    [openai_body] = fake_model.requests
    assert {k: openai_body[k] for k in settings if k not in ("stop_sequences",)} | {
        "stop": openai_body["stop"], "max_tokens": openai_body["max_tokens"]
    } == {
        "temperature": 0.4, "top_p": 0.8, "max_tokens": 2000, "stop": ["STOP"],
        "parallel_tool_calls": False, "reasoning_effort": "low",
    }  # fmt: skip
    [claude_body] = anthropic_model.requests
    assert claude_body["temperature"] == 0.4 and claude_body["top_p"] == 0.8
    assert claude_body["stop_sequences"] == ["STOP"]
    assert claude_body["max_tokens"] == 2000
    assert claude_body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert claude_body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_overrides_change_one_run_only(client, fake_model, anthropic_model) -> None:
    agent = await create_agent(client, name="overridable", tools=["calculate", "current_time"])
    session = (await client.create_session(agent, "tester")).id
    overrides = agent_pb2.ModelOverrides(
        model=CLAUDE, temperature=0.1, tool_choice="current_time",
        reasoning_effort=agent_pb2.REASONING_EFFORT_NONE,
    )  # fmt: skip
    anthropic_model.responder.push(anthropic_text_reply("from claude"))
    reply = await client.send_to(
        session, "one", options=run_service_pb2.RunOptions(overrides=overrides)
    )
    assert reply.response.final_response == "from claude"
    assert reply.response.model == CLAUDE
    [claude_body] = anthropic_model.requests
    assert claude_body["temperature"] == 0.1
    assert claude_body["tool_choice"] == {"type": "tool", "name": "current_time"}
    assert "thinking" not in claude_body
    # The next run is the agent's own again, on the default provider.
    fake_model.responder.push(text_reply("from default"))
    reply = await client.send_to(session, "two")
    assert reply.response.final_response == "from default"
    [body] = fake_model.requests
    assert body["model"] == "fake-model" and "temperature" not in body and body["tool_choice"] == "auto"


@pytest.mark.parametrize(
    ("overrides", "code", "reason", "field"),
    [
        (agent_pb2.ModelOverrides(tool_choice="delete_everything"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_AGENT_CONFIG", "options.overrides.tool_choice"),
        (agent_pb2.ModelOverrides(temperature=7), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_AGENT_CONFIG", "options.overrides.temperature"),
        (agent_pb2.ModelOverrides(model="nowhere/model-x"), grpc.StatusCode.FAILED_PRECONDITION,
         "UNKNOWN_MODEL_PROVIDER", None),
        (agent_pb2.ModelOverrides(reasoning_effort=42), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REASONING_EFFORT", "options.overrides.reasoning_effort"),
    ],
)  # fmt: skip
async def test_bad_overrides_are_refused(client, session_of, overrides, code, reason, field) -> None:
    session = await session_of(tools=("calculate",))
    with pytest.raises(PilothouseRpcError) as caught:
        await client.send_to(session, "x", options=run_service_pb2.RunOptions(overrides=overrides))
    assert caught.value.code is code and caught.value.reason == reason
    if field is not None:
        assert [f for f, _ in caught.value.field_violations] == [field]


# --- DeepSeek's thinking mode ----------------------------------------------------------------


async def test_deepseek_gets_its_reasoning_back_with_the_tool_calls(client, fake_model, session_of) -> None:
    session = await session_of(tools=("calculate",))

    def like_deepseek(body: dict[str, Any]) -> SSEReply | JSONReply:
        assistant = body["messages"][-2]
        if "reasoning_content" not in assistant:
            return JSONReply(400, {"error": {
                "message": "Missing `reasoning_content` field in the assistant message",
                "type": "invalid_request_error", "code": "invalid_request_error"}})  # fmt: skip
        return text_reply("2 + 2 = 4")

    fake_model.responder.push(
        tool_calls_reply([("call_0", "calculate", '{"expression": "2+2"}')], reasoning="Use the tool."),
        like_deepseek,
    )
    reply = await client.send_to(session, "2+2?")
    assert reply.response.error == ""
    assert reply.response.final_response == "2 + 2 = 4"
    assert fake_model.requests[1]["messages"][-2]["reasoning_content"] == "Use the tool."


async def test_a_stream_with_a_byte_order_mark_runs_through(client, fake_model, session_of) -> None:
    from pilothouse.testmodel import Raw

    session = await session_of(tools=("calculate",))
    f = ChunkFactory()
    call = f.chunk({"tool_calls": [{"index": 0, "id": "call_b", "type": "function",
                                    "function": {"name": "calculate", "arguments": '{"expression": "1+1"}'}}]})
    fake_model.responder.push(
        SSEReply([Raw(b"\xef\xbb\xbf" + f"data: {call}\n\n".encode()),
                  f.chunk({}, finish_reason="tool_calls"), "[DONE]"]),
        text_reply("2"),
    )  # fmt: skip
    events = await collect(client.stream_to(session, "1+1?"))
    assert "tool_result" in kinds(events)
    assert json.loads(fake_model.requests[1]["messages"][-1]["content"]) == 2
