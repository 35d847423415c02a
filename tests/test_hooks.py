"""Hook plugins, loaded through their entry points into real servers on
real ports: the shipped `memory` and `argument_policy` plugins (in this
process and in a `pilothouse-server` process), guardrails, argument
rewrites and redaction, agents enriched on registration, event observers
that cannot stall a run, and failing hooks that end runs cleanly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pilothouse.app.startup import StartupError, start_app
from pilothouse.client import PilothouseClient
from pilothouse.client.errors import PilothouseRpcError
from pilothouse.ops import telemetry
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import event_pb2, message_pb2
from tests import hook_plugins
from tests.conftest import app_settings, assert_valid_history, collect, kinds, wait_until
from tests.test_durable_sessions import runtime_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def test_plugins(tmp_path_factory) -> AsyncIterator[Path]:
    """The test plugins' entry points, found by importlib.metadata."""
    root = hook_plugins.register(tmp_path_factory.mktemp("plugins"))
    sys.path.append(str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("pilothouse-test", provider=TracerProvider(), exporter=exporter)
    return exporter


@asynccontextmanager
async def hooked(fake_model, tool_server, *hooks: str, **hook_settings) -> AsyncIterator[PilothouseClient]:
    """A runtime with `hooks` enabled (settings per plugin as keywords)."""
    hook_plugins.SEEN.clear()
    app = await start_app(
        app_settings(fake_model, tool_server, hooks=list(hooks), hook_settings=hook_settings)
    )
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            yield client
    finally:
        await app.stop(0)


def model_messages(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in request["messages"]]


# --- memory ---------------------------------------------------------------


async def test_memory_remembers_in_the_store_and_recalls_before_each_run(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "memory") as client:
        await client.create_agent("keeper", system_prompt="Be brief.")
        session = await client.create_session("keeper", "ada")
        fake_model.responder.push(text_reply("Noted."), text_reply("Hi Ada."), text_reply("Still Ada."))
        reply = await client.send_to(session.id, "/remember my name is Ada", timeout=30)
        assert reply.response.final_response == "Noted."
        # The command's run already sees the fact, just before its message.
        assert model_messages(fake_model.requests[0]) == [
            ("system", "Be brief."),
            ("system", "Facts the user asked you to remember:\n- my name is Ada"),
            ("user", "/remember my name is Ada"),
        ]
        await client.send_to(session.id, "Who am I?", timeout=30)
        await client.send_to(session.id, "And now?", timeout=30)
        # Each run gets one fresh recall message before its user message; the
        # previous runs' are gone.
        recalls = [m for m in model_messages(fake_model.requests[2]) if m[1].startswith("Facts")]
        assert len(recalls) == 1
        assert model_messages(fake_model.requests[2])[-2:] == [
            ("system", "Facts the user asked you to remember:\n- my name is Ada"),
            ("user", "And now?"),
        ]
        # Recall is never stored: the history is the conversation alone.
        history = await client.list_messages(session.id)
        assert [m.content for m in history] == [
            "/remember my name is Ada", "Noted.", "Who am I?", "Hi Ada.", "And now?", "Still Ada.",
        ]
        assert not any(m.auto_injected for m in history)

        # Another session of the same user has its own memory (scope "session").
        other = await client.create_session("keeper", "ada")
        fake_model.responder.push(text_reply("Who?"))
        await client.send_to(other.id, "Who am I?", timeout=30)
        assert not [m for m in model_messages(fake_model.requests[3]) if "remember" in m[1]]

        # /forget forgets.
        fake_model.responder.push(text_reply("Forgotten."), text_reply("No idea."))
        await client.send_to(session.id, "/forget", timeout=30)
        await client.send_to(session.id, "Who am I?", timeout=30)
        assert not [m for m in model_messages(fake_model.requests[5]) if m[0] == "system" and "Ada" in m[1]]


async def test_memory_with_user_scope_follows_the_user_across_sessions(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "memory", memory={"scope": "user", "max_facts": 2}) as client:
        await client.create_agent("keeper")
        first = await client.create_session("keeper", "bob")
        fake_model.responder.push(*(text_reply("Ok.") for _ in range(4)))
        for fact in ("I like tea", "I live in Oslo", "I have a cat"):
            await client.send_to(first.id, f"/remember {fact}", timeout=30)
        second = await client.create_session("keeper", "bob")
        await client.send_to(second.id, "Hello", timeout=30)
        system = [c for role, c in model_messages(fake_model.requests[-1]) if role == "system"]
        # The oldest fact went (max_facts = 2).
        assert system == ["Facts the user asked you to remember:\n- I live in Oslo\n- I have a cat"]


# --- argument policy --------------------------------------------------------

POLICY = {
    "rules": [
        {"tool": "delete_records", "path": "$.table", "deny": ["users"]},
        {"tool": "text_*", "path": "$.text", "deny_pattern": "(?i)secret",
         "reason": "no secrets in text tools"},
        {"tool": "calculate", "path": "$.expression", "ask": ["2**64"]},
    ]
}


async def test_the_argument_policy_denies_asks_and_allows_by_json_path(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "argument_policy", argument_policy=POLICY) as client:
        await client.create_agent("dba", tools=["delete_records", "text_stats", "calculate"])
        session = await client.create_session("dba", "ops")
        fake_model.responder.push(
            tool_calls_reply([
                ("c1", "delete_records", json.dumps({"table": "users"})),
                ("c2", "text_stats", json.dumps({"text": "my SECRET plan"})),
                ("c3", "text_stats", json.dumps({"text": "two words"})),
            ]),
            text_reply("Done what I could."),
        )
        events = await collect(client.stream_to(session.id, "Clean up"))
        results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
        # Denied before the approval delete_records always needs.
        assert "approval_required" not in kinds(events)
        assert results["c1"].error == (
            'the argument policy does not allow delete_records with $.table = "users"'
        )
        assert results["c2"].error == "no secrets in text tools"
        assert json.loads(results["c3"].output)["words"] == 2
        assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
        # The model read the denials as the calls' results.
        tool_messages = [m for m in fake_model.requests[1]["messages"] if m["role"] == "tool"]
        assert tool_messages[0]["content"].startswith("the argument policy does not allow")
        assert_valid_history(await client.list_messages(session.id))

        # An "ask" value waits for a decision; other tables run after approval as usual.
        fake_model.responder.push(
            tool_calls_reply([("c4", "calculate", json.dumps({"expression": "2**64"}))]),
            text_reply("Big."),
        )
        stream = client.stream_to(session.id, "How big is 2**64?")
        async for event in stream:
            if event.HasField("approval_required"):
                assert event.approval_required.reason == (
                    'the argument policy asks for approval of calculate with $.expression = "2**64"'
                )
                await client.submit_decision(session.id, event_pb2.Decision(
                    request_id=event.approval_required.request_id, verdict=event_pb2.VERDICT_APPROVE))
            if event.HasField("done"):
                assert event.done.final_response == "Big."


async def test_bad_policy_settings_stop_the_server_from_starting(fake_model, tool_server):
    with pytest.raises(StartupError, match=r"argument_policy.*settings are refused: rules\.0\.path: is not a JSON path"):
        async with hooked(fake_model, tool_server, "argument_policy",
                          argument_policy={"rules": [{"tool": "x", "path": "$[", "deny": [1]}]}):
            pass
    with pytest.raises(StartupError, match=r"'nope' is not installed.*installed: .*argument_policy"):
        async with hooked(fake_model, tool_server, "nope"):
            pass


async def test_the_shipped_plugins_load_in_a_server_process(tmp_path, fake_model, tool_server, test_plugins):
    """Entry points of the installed distribution (memory, argument_policy)
    and of another one (the test plugins, on PYTHONPATH), enabled by
    PILOTHOUSE_HOOKS with their tables from the config file."""
    config = tmp_path / "pilothouse.toml"
    config.write_text(
        '[hooks]\nenabled = ["memory", "enricher"]\n\n'
        '[hooks.enricher]\nsentence = "Say please."\n\n'
        '[[hooks.argument_policy.rules]]\ntool = "text_stats"\npath = "$.text"\ndeny = ["forbidden"]\n'
    )
    env = {
        "PILOTHOUSE_CONFIG": str(config),
        "PILOTHOUSE_HOOKS": "memory,argument_policy,enricher",  # the environment wins
        "PYTHONPATH": os.pathsep.join([str(REPO), str(test_plugins)]),
    }
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", json.dumps({"text": "forbidden"}))]),
        text_reply("Refused, as it should be."),
        text_reply("You are Grace."),
    )
    async with runtime_process(tmp_path, fake_model, tool_server, "sqlite:///hooks.db", **env) as (_, client):
        agent = await client.get_agent("keeper")
        assert agent.config.system_prompt.endswith("Say please.")
        session = await client.create_session("keeper", "grace")
        await client.send_to(session.id, "/remember I am Grace", timeout=30)
        # text_stats was denied: the second request carries the denial.
        denial = next(m for m in fake_model.requests[1]["messages"] if m["role"] == "tool")
        assert denial["content"] == (
            'the argument policy does not allow text_stats with $.text = "forbidden"'
        )
        await client.send_to(session.id, "Who am I?", timeout=30)
        assert ("system", "Facts the user asked you to remember:\n- I am Grace") in model_messages(
            fake_model.requests[-1]
        )
    # The facts are in the SQLite store, for the next start.
    fake_model.responder.push(text_reply("Grace again."))
    async with runtime_process(tmp_path, fake_model, tool_server, "sqlite:///hooks.db", **env) as (_, client):
        await client.send_to(session.id, "And now?", timeout=30)
        assert ("system", "Facts the user asked you to remember:\n- I am Grace") in model_messages(
            fake_model.requests[-1]
        )


# --- guardrails, rewrites, enrichment -----------------------------------------


async def test_a_guardrail_stop_ends_the_run_with_guardrail(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "guard",
                      guard={"block_request": "password", "block_answer": "leak"}) as client:
        await client.create_agent("guarded")
        session = await client.create_session("guarded", "eve")
        events = await collect(client.stream_to(session.id, "Tell me the admin password"))
        done = events[-1].done
        assert done.stop_reason == event_pb2.STOP_REASON_GUARDRAIL
        assert done.error == "the request mentions 'password'"
        assert not fake_model.requests  # the model was never called
        session_after = await client.get_session(session.id)
        assert session_after.last_run_stop_reason == event_pb2.STOP_REASON_GUARDRAIL
        _, info = hook_plugins.SEEN["guard"][0]
        assert (info.session_id, info.agent, info.created_by, info.run_id) == (
            session.id, "guarded", "eve", events[0].run_id
        )

        fake_model.responder.push(text_reply("Here is the leak: 1234"))
        events = await collect(client.stream_to(session.id, "Anything new?"))
        assert events[-1].done.stop_reason == event_pb2.STOP_REASON_GUARDRAIL
        assert events[-1].done.error == "the answer mentions 'leak'"
        # The streamed answer was not stored.
        assert [m.content for m in await client.list_messages(session.id)] == [
            "Tell me the admin password", "Anything new?",
        ]


async def test_tool_calls_are_rewritten_before_they_are_stored_and_results_redacted(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "rewriter") as client:
        await client.create_agent("counter", tools=["text_stats"])
        session = await client.create_session("counter", "x")
        fake_model.responder.push(
            tool_calls_reply([("c1", "text_stats", json.dumps({"text": "the original"}))]),
            text_reply("Counted."),
        )
        events = await collect(client.stream_to(session.id, "Count"))
        result = next(e.tool_result for e in events if e.HasField("tool_result"))
        assert "#" in result.output and not any(ch.isdigit() for ch in result.output)
        history = await client.list_messages(session.id)
        call = history[1].tool_calls[0]
        assert json.loads(call.arguments_json) == {"text": "rewritten by a hook"}  # what ran
        assert history[2].content == result.output  # the redacted result is what is stored


async def test_agents_are_enriched_when_registered(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "enricher") as client:
        agent = await client.create_agent("polite", system_prompt="Be brief.")
        assert agent.config.system_prompt == "Be brief. Always answer politely."
        assert (await client.get_agent("polite")).config.system_prompt.endswith("politely.")
        updated = await client.update_agent("polite", system_prompt="Be long.")
        assert (updated.version, updated.config.system_prompt) == (2, "Be long. Always answer politely.")


# --- on_event ---------------------------------------------------------------


async def test_observers_see_every_event_and_a_stalled_one_does_not_stall_the_run(fake_model, tool_server):
    async with hooked(fake_model, tool_server, "stalled", "recorder") as client:
        await client.create_agent("watched", tools=["text_stats"])
        session = await client.create_session("watched", "w")
        fake_model.responder.push(
            tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b c"}))]),
            text_reply("Three."),
        )
        events = await collect(client.stream_to(session.id, "Count"))
        assert events[-1].done.final_response == "Three."
        await wait_until(lambda: len(hook_plugins.SEEN["recorder"]) == len(events))
        seen = hook_plugins.SEEN["recorder"]
        assert [e.sequence for e in seen] == [e.sequence for e in events]
        assert type(seen[0].event).__name__ == "RunStarted"
        assert type(seen[-1].event).__name__ == "Done"
        # The stalled observer got the first event, held one more and dropped the rest.
        assert len(hook_plugins.SEEN["stalled"]) == 1


async def test_a_failing_observer_is_logged_and_skipped(fake_model, tool_server, caplog):
    async with hooked(fake_model, tool_server, "failing", "recorder", failing={"method": "on_event"}) as client:
        await client.create_agent("watched")
        session = await client.create_session("watched", "w")
        fake_model.responder.push(text_reply("Fine."))
        reply = await client.send_to(session.id, "Hi", timeout=30)
        assert reply.response.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
        await wait_until(lambda: any(type(e.event).__name__ == "Done" for e in hook_plugins.SEEN["recorder"]))
        await wait_until(lambda: "failed in on_event (skipped)" in caplog.text)


# --- failing hooks ------------------------------------------------------------


async def test_a_failing_tool_hook_ends_the_run_with_error_and_valid_history(
    fake_model, tool_server, exporter
):
    async with hooked(fake_model, tool_server, "failing", failing={"method": "after_tool_call"}) as client:
        await client.create_agent("fragile", tools=["text_stats", "current_time"])
        session = await client.create_session("fragile", "f")
        fake_model.responder.push(tool_calls_reply([
            ("c1", "text_stats", json.dumps({"text": "one"})),
            ("c2", "current_time", "{}"),
        ]))
        events = await collect(client.stream_to(session.id, "Go"))
        done = events[-1].done
        assert done.stop_reason == event_pb2.STOP_REASON_ERROR
        assert done.error == "hook 'failing' failed in after_tool_call: RuntimeError: after_tool_call broke"
        history = await client.list_messages(session.id)
        assert_valid_history(history)
        tool_results = [m.content for m in history if m.role == message_pb2.ROLE_TOOL]
        assert len(tool_results) == 2 and all("withheld" in r or "cancelled" in r for r in tool_results)

        def failed_span():
            return next((s for s in exporter.get_finished_spans()
                         if any(e.name == "hook_failed" for e in s.events)), None)

        await wait_until(lambda: failed_span() is not None)
        span = failed_span()
        assert span.name.startswith("execute_tool")
        assert span.status.status_code is StatusCode.ERROR
        event = next(e for e in span.events if e.name == "hook_failed")
        assert event.attributes["pilothouse.hook.name"] == "failing"
        assert event.attributes["pilothouse.hook.method"] == "after_tool_call"


@pytest.mark.parametrize("method", ["before_tool_call", "before_model_call"])
async def test_other_failing_run_hooks_end_the_run_with_error(fake_model, tool_server, method):
    async with hooked(fake_model, tool_server, "failing", failing={"method": method}) as client:
        await client.create_agent("fragile", tools=["text_stats"])
        session = await client.create_session("fragile", "f")
        if method == "before_tool_call":
            fake_model.responder.push(tool_calls_reply([
                ("c1", "text_stats", json.dumps({"text": "one"})),
                ("c2", "text_stats", json.dumps({"text": "two"})),
            ]))
        events = await collect(client.stream_to(session.id, "Go"))
        assert events[-1].done.stop_reason == event_pb2.STOP_REASON_ERROR
        assert events[-1].done.error == f"hook 'failing' failed in {method}: RuntimeError: {method} broke"
        assert "tool_result" not in kinds(events) or method == "before_tool_call"
        history = await client.list_messages(session.id)
        assert_valid_history(history)
        if method == "before_tool_call":
            assert [m.content for m in history if m.role == message_pb2.ROLE_TOOL] == [
                events[-1].done.error, f"cancelled: {events[-1].done.error}",
            ]


@pytest.mark.parametrize("method", ["preprocess", "on_build_agent"])
async def test_hooks_failing_before_a_run_refuse_the_call(fake_model, tool_server, method):
    async with hooked(fake_model, tool_server, "failing", failing={"method": method}) as client:
        with pytest.raises(PilothouseRpcError) as error:
            await client.create_agent("fragile")
            session = await client.create_session("fragile", "f")
            await client.send_to(session.id, "Hello", timeout=30)
        assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.reason == "HOOK_FAILED"
        assert error.value.metadata == {"hook": "failing", "method": method}
        if method == "preprocess":
            assert await client.list_messages(session.id) == []


# --- the README's plugin ------------------------------------------------------


def readme_block(first_line: str) -> str:
    """The fenced block of README.md whose first line is `first_line`."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{first_line}\n") + 1
    return text[start:text.index("\n```", start)] + "\n"


async def test_the_readme_plugin_works_as_written(tmp_path, fake_model, tool_server):
    """The plugin, pyproject entry point and settings of README's "Writing a
    plugin", installed as a distribution's metadata and loaded by name."""
    import tomllib

    package = tmp_path / "acme_hooks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "profanity.py").write_text(readme_block("# acme_hooks/profanity.py"))
    project = tomllib.loads(readme_block("# acme_hooks/pyproject.toml"))
    settings = tomllib.loads(readme_block("# pilothouse.toml, after `pip install ./acme_hooks` next to the server"))
    dist = tmp_path / "acme_hooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-hooks\nVersion: 1.0\n")
    entry_points = project["project"]["entry-points"]["pilothouse.hooks"]
    (dist / "entry_points.txt").write_text(
        "[pilothouse.hooks]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    sys.path.append(str(tmp_path))
    try:
        hooks = settings["hooks"]
        plugin_settings = {k: v for k, v in hooks.items() if k != "enabled"}
        async with hooked(fake_model, tool_server, *hooks["enabled"], **plugin_settings) as client:
            await client.create_agent("talker")
            session = await client.create_session("talker", "kid")
            fake_model.responder.push(text_reply("Oh heck, no."))
            reply = await client.send_to(session.id, "Say something", timeout=30)
            assert reply.response.stop_reason == event_pb2.STOP_REASON_GUARDRAIL
            assert reply.response.error == "the answer used a blocked word"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_hooks.profanity", None)
        sys.modules.pop("acme_hooks", None)


async def test_auto_injected_messages_of_an_import_are_not_shown_to_the_model(
    client, fake_model, make_agent
):
    """Even without plugins: an earlier run's auto-injected message stays
    stored (history is append-only) but the model no longer sees it."""
    agent = await make_agent()
    lines = [
        {"type": "meta", "agent": agent, "created_by": "me"},
        {"type": "message", "role": "user", "content": "Hi"},
        {"type": "message", "role": "system", "content": "Old recall", "auto_injected": True},
        {"type": "message", "role": "assistant", "content": "Hello."},
    ]
    session = await client.import_session("\n".join(json.dumps(line) for line in lines).encode())
    fake_model.responder.push(text_reply("Again."))
    await client.send_to(session.id, "Again?", timeout=30)
    assert model_messages(fake_model.requests[0])[1:] == [
        ("user", "Hi"), ("assistant", "Hello."), ("user", "Again?"),
    ]
    assert [m.content for m in await client.list_messages(session.id)] == [
        "Hi", "Old recall", "Hello.", "Again?", "Again.",
    ]
