"""Isolation between principals: a session and everything about it (its
messages, runs, events, decisions, exports) belong to the principal who
created it. Another principal's calls answer NOT_FOUND, as if it did not
exist, on every RPC, directly and through another replica; an admin sees
everything; `created_by` cannot be asserted; agents may restrict who runs
them; a run's principal reaches its tools."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError, decision
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import agent_pb2, event_pb2, run_service_pb2 as runs_pb, session_service_pb2
from tests.conftest import app_settings, collect
from tests.pg import pg_server  # noqa: F401 - fixture
from tests.test_auth import tokens_file

TOKENS = {
    "alice-secret": ("alice", ["user"]),
    "bob-secret": ("bob", ["user"]),
    "root-secret": ("root", ["admin"]),
}


@contextlib.asynccontextmanager
async def runtimes(model_server, tool_server, tmp_path, count: int, **overrides):
    path = tokens_file(tmp_path / "tokens.toml", TOKENS)
    apps = []
    try:
        for _ in range(count):
            apps.append(await start_app(app_settings(
                model_server, tool_server, auth=["tokens"], auth_tokens_file=path, **overrides,
            )))
        yield apps
    finally:
        for app in apps:
            await app.stop(0)


async def not_found(call) -> PilothouseRpcError:
    with pytest.raises(PilothouseRpcError) as caught:
        await call
    assert caught.value.code is grpc.StatusCode.NOT_FOUND, caught.value
    return caught.value


def held(text: str, release: asyncio.Event) -> SSEReply:
    events = text_reply(text).events
    return SSEReply([*events[:2], Pause(release), *events[2:]])


async def every_call_is_not_found(bob: PilothouseClient, session_id: str, run_id: str,
                                  request_id: str) -> None:
    """Bob tries everything on Alice's session and run."""
    await not_found(bob.get_session(session_id))
    await not_found(bob.list_messages(session_id))
    await not_found(collect(bob.attach(session_id, run_id)))
    await not_found(collect(bob.attach(session_id)))
    steer = await bob.steer_attach(session_id, run_id)
    await not_found(collect(steer))
    await not_found(bob.steer_session(session_id, "let me in"))
    await not_found(bob.cancel(session_id, run_id))
    await not_found(bob.cancel(session_id))
    await not_found(bob.submit_decision(session_id, decision(request_id, event_pb2.VERDICT_APPROVE)))
    await not_found(bob.send_to(session_id, "hello", timeout=10))
    await not_found(collect(bob.stream_to(session_id, "hello")))
    start = await bob.steer(session_id, "hello")
    await not_found(collect(start))
    await not_found(bob.compact_session(session_id))
    await not_found(bob.export_session(session_id))
    await not_found(bob.close_session(session_id))
    await not_found(bob.delete_session(session_id))
    await not_found(bob.get_run(run_id))
    await not_found(bob.get_run(run_id, session_id))
    await not_found(bob.list_runs(session_id))
    assert session_id not in [s.id for s in await bob.list_sessions()]
    assert session_id not in [s.id for s in await bob.list_sessions(created_by="alice")]
    found = await bob.sessions.SearchSessions(
        session_service_pb2.SearchSessionsRequest(query="secret"), timeout=10
    )
    assert session_id not in [r.session.id for r in found.results]


async def test_another_principals_session_is_not_found_on_every_rpc(model_server, tool_server, fake_model, tmp_path):
    release = asyncio.Event()
    async with runtimes(model_server, tool_server, tmp_path, 1, store_url="sqlite:///iso.db",
                        data_dir=tmp_path) as (app,):
        target = f"127.0.0.1:{app.port}"
        async with (
            PilothouseClient(target, token="root-secret") as root,
            PilothouseClient(target, token="alice-secret") as alice,
            PilothouseClient(target, token="bob-secret") as bob,
        ):
            await root.create_agent("careful", tools=["text_stats"],
                                    approval_policy=agent_pb2.APPROVAL_POLICY_ALWAYS)
            # created_by is the caller: asserting someone else is refused.
            with pytest.raises(PilothouseRpcError) as caught:
                await alice.create_session("careful", "bob")
            assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
            session = await alice.create_session("careful", "")
            assert session.created_by == "alice"
            fake_model.responder.push(text_reply("The secret word is kept."))
            await alice.send_to(session.id, "Remember the secret word", timeout=30)

            fake_model.responder.push(
                tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b"}))]),
                held("Two.", release),
            )
            seen = []
            async for event in alice.stream_to(session.id, "Count"):
                seen.append(event)
                if event.HasField("approval_required"):
                    break
            run_id, request_id = seen[0].run_id, seen[-1].approval_required.request_id

            await every_call_is_not_found(bob, session.id, run_id, request_id)

            # An import belongs to whoever imports it.
            exported = await alice.export_session(session.id)
            imported = await bob.import_session(exported)
            assert imported.created_by == "bob"
            assert [s.id for s in await bob.list_sessions()] == [imported.id]

            # The admin sees and may act on every session.
            assert (await root.get_session(session.id)).created_by == "alice"
            assert {s.id for s in await root.list_sessions()} >= {session.id, imported.id}
            # Alice's run is untouched; she decides it.
            await alice.submit_decision(session.id, decision(request_id, event_pb2.VERDICT_APPROVE))
            release.set()
            rest = await collect(alice.attach(session.id, run_id, seen[-1].sequence))
            assert rest[-1].done.final_response == "Two."


async def test_calls_through_another_replica_are_checked_too(
    model_server, tool_server, fake_model, tmp_path, pg_server  # noqa: F811
):
    dsn = await pg_server.new_database()
    release = asyncio.Event()
    try:
        async with runtimes(model_server, tool_server, tmp_path, 2, store_url=dsn) as (one, two):
            async with (
                PilothouseClient(f"127.0.0.1:{one.port}", token="root-secret") as root,
                PilothouseClient(f"127.0.0.1:{one.port}", token="alice-secret") as alice_one,
                PilothouseClient(f"127.0.0.1:{two.port}", token="alice-secret") as alice_two,
                PilothouseClient(f"127.0.0.1:{two.port}", token="bob-secret") as bob_two,
            ):
                await root.create_agent("careful", tools=["text_stats"],
                                        approval_policy=agent_pb2.APPROVAL_POLICY_ALWAYS)
                session = await alice_one.create_session("careful", "")
                fake_model.responder.push(
                    tool_calls_reply([("c1", "text_stats", json.dumps({"text": "a b c"}))]),
                    held("Three.", release),
                )
                seen = []
                async for event in alice_one.stream_to(session.id, "Count"):
                    seen.append(event)
                    if event.HasField("approval_required"):
                        break
                run_id, request_id = seen[0].run_id, seen[-1].approval_required.request_id

                # Through replica two, which forwards calls about the run to
                # replica one: Bob is refused on the way; Alice is let in.
                await every_call_is_not_found(bob_two, session.id, run_id, request_id)
                await alice_two.submit_decision(
                    session.id, decision(request_id, event_pb2.VERDICT_APPROVE)
                )
                release.set()
                rest = await collect(alice_two.attach(session.id, run_id, seen[-1].sequence))
                assert rest[-1].done.final_response == "Three."
    finally:
        release.set()


async def test_agents_may_restrict_who_runs_them_and_tools_see_the_principal(
    model_server, tool_server, fake_model, tmp_path
):
    async with runtimes(model_server, tool_server, tmp_path, 1) as (app,):
        target = f"127.0.0.1:{app.port}"
        async with (
            PilothouseClient(target, token="root-secret") as root,
            PilothouseClient(target, token="alice-secret") as alice,
            PilothouseClient(target, token="bob-secret") as bob,
        ):
            await root.create_agent("alice-only", allowed_principals=["alice"])
            await root.create_agent("admins-only", allowed_roles=["admin"])
            fake_model.responder.push(text_reply("Hi Alice."))
            session = await alice.create_session("alice-only", "")
            assert (await alice.send_to(session.id, "hi", timeout=30)).response.final_response == "Hi Alice."
            bobs = await bob.create_session("alice-only", "")
            with pytest.raises(PilothouseRpcError) as caught:
                await bob.send_to(bobs.id, "hi", timeout=30)
            assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.reason == "AGENT_NOT_ALLOWED"
            bobs = await bob.create_session("admins-only", "")
            with pytest.raises(PilothouseRpcError) as caught:
                await bob.send_to(bobs.id, "hi", timeout=30)
            assert caught.value.reason == "AGENT_NOT_ALLOWED"

            # The run's principal travels with each ExecuteTool: a tool only
            # for admins refuses Bob's run and serves the admin's.
            await root.create_agent("ops", tools=["admin_only"])
            for client, refused in ((bob, True), (root, False)):
                session = await client.create_session("ops", "")
                fake_model.responder.push(
                    tool_calls_reply([("c1", "admin_only", "{}")]), text_reply("ok"),
                )
                events = await collect(client.stream_to(session.id, "go"))
                result = next(e.tool_result for e in events if e.HasField("tool_result"))
                assert (result.WhichOneof("outcome") == "error") is refused, result
                run = await client.get_run(events[0].run_id)
                assert run.status == runs_pb.RUN_STATUS_FINISHED


async def test_only_an_audited_setting_lifts_an_executors_approval(
    model_server, tool_server, fake_model, tmp_path, caplog
):
    """An agent's APPROVAL_POLICY_NEVER does not lift what the ToolExecutor
    declares; PILOTHOUSE_APPROVAL_EXEMPT_TOOLS does, and says so in the
    audit log."""
    import logging

    caplog.set_level(logging.INFO, logger="pilothouse.audit")
    app = await start_app(app_settings(model_server, tool_server,
                                       approval_exempt_tools=["delete_records"]))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("exempt", tools=["delete_records"],
                                      approval_policy=agent_pb2.APPROVAL_POLICY_NEVER)
            session = await client.create_session("exempt", "ops")
            fake_model.responder.push(
                tool_calls_reply([("d1", "delete_records", json.dumps({"table": "t"}))]),
                text_reply("Deleted."),
            )
            events = await collect(client.stream_to(session.id, "Clear t"))
            assert "approval_required" not in [e.WhichOneof("event") for e in events]
    finally:
        await app.stop(0)
    assert any(r.getMessage() == "approval.exempted" and r.tools == "delete_records"
               for r in caplog.records)
