"""Agents that live, in real server processes: the agents file is edited
while `pilothouse-server` runs (changes become new versions, an agent that
left the file takes no new runs while its running run finishes, a broken
edit changes nothing), and a run killed with `kill -9` resumes on the
version it started with although the agent was updated meanwhile.

The processes use the fake model and the test ToolExecutor of this test
process; state is awaited by polling the server (or its log), never by
sleeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.client.errors import PilothouseError
from pilothouse.testmodel import text_reply
from pilothouse.v1 import agent_pb2, event_pb2
from tests.conftest import app_settings, collect, wait_until
from tests.test_agent_versions import system_prompt
from tests.test_durable_runs import paused, stored_up_to
from tests.test_durable_sessions import first, free_port, runtime_process

FIRST = '''
[[agents]]
name = "watched"
system_prompt = "watched v1"

[[agents]]
name = "leaving"
system_prompt = "about to leave"
'''

SECOND = '''
[[agents]]
name = "watched"
system_prompt = "watched v2"

[[agents]]
name = "newcomer"
system_prompt = "just arrived"
'''


def write_atomically(path: Path, text: str) -> None:
    """As editors save: a new file renamed onto the old one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def failure(call) -> PilothouseError:
    with pytest.raises(PilothouseError) as caught:
        await call
    return caught.value


async def test_edits_of_the_agents_file_apply_while_the_server_runs(tmp_path, fake_model, tool_server):
    conf = tmp_path / "conf"
    conf.mkdir()
    agents_file = conf / "agents.toml"
    agents_file.write_text(FIRST)
    release = asyncio.Event()
    env = {"PILOTHOUSE_AGENTS_FILE": str(agents_file)}
    try:
        async with runtime_process(tmp_path, fake_model, tool_server, "sqlite:///watch.db",
                                   **env) as (_, client):
            watched = await client.create_session("watched", "watcher")
            leaving = await client.create_session("leaving", "watcher")
            assert (await client.get_agent("watched")).source == "file"
            fake_model.responder.push(paused(text_reply("finished after all", chunk_size=4),
                                             release, 2))
            stream = client.stream_to(leaving.id, "a long story please")
            seen = await first(stream, "text_delta")

            write_atomically(agents_file, SECOND)

            async def applied() -> bool:
                agent = await client.get_agent("watched")
                gone = await client.get_agent("leaving")
                return agent.version == 2 and gone.state == agent_pb2.AGENT_STATE_REMOVED

            await wait_until(applied, timeout=30, interval=0.05)
            assert (await client.get_agent("newcomer")).config.system_prompt == "just arrived"
            versions = await client.list_agent_versions("watched")
            assert [(v.version, v.config.system_prompt) for v in versions] == [
                (2, "watched v2"), (1, "watched v1")]

            release.set()  # the run that started before the removal finishes
            events = seen + await collect(stream)
            assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
            assert events[-1].done.final_response == "finished after all"

            error = await failure(client.send_to(leaving.id, "anyone there?"))
            assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_REMOVED")
            assert error.metadata["agent"] == "leaving"
            error = await failure(client.create_session("leaving", "watcher"))
            assert error.reason == "AGENT_REMOVED"
            error = await failure(client.update_agent("watched", system_prompt="by the API"))
            assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_FROM_FILE")

            fake_model.responder.push(text_reply("on v2"))
            await client.send_to(watched.id, "hello")
            assert system_prompt(fake_model.requests[-1]) == "watched v2"

            # A broken edit (in place this time) changes nothing.
            agents_file.write_text("[[agents]\nname = ")
            log = tmp_path / "server.log"
            await wait_until(lambda: "agents unchanged" in log.read_text(errors="replace"),
                             timeout=30, interval=0.05)
            assert (await client.get_agent("watched")).version == 2
            assert (await client.get_agent("newcomer")).state == agent_pb2.AGENT_STATE_ACTIVE

            # The agent that left comes back with its old config: active, same version.
            agents_file.write_text(SECOND + FIRST.replace('name = "watched"', 'name = "watched3"'))

            async def back() -> bool:
                return (await client.get_agent("leaving")).state == agent_pb2.AGENT_STATE_ACTIVE

            await wait_until(back, timeout=30, interval=0.05)
            assert (await client.get_agent("leaving")).version == 1
            fake_model.responder.push(text_reply("back again"))
            reply = await client.send_to(leaving.id, "welcome back")
            assert reply.response.final_response == "back again"
    finally:
        release.set()


async def test_a_resumed_run_keeps_its_version_after_an_update(tmp_path, fake_model, tool_server):
    store_url = "sqlite:///resume.db"
    address = f"127.0.0.1:{free_port()}"
    release = asyncio.Event()
    fake_model.responder.push(paused(text_reply("cut short by a crash", chunk_size=4), release, 2))
    try:
        async with runtime_process(tmp_path, fake_model, tool_server, store_url, address) as (
            process, client
        ):
            await client.create_agent("evolving", system_prompt="before the update")
            session = await client.create_session("evolving", "survivor")
            stream = client.stream_to(session.id, "tell me")
            seen = await first(stream, "text_delta")
            run_id = seen[0].run_id
            await stored_up_to(store_url, tmp_path, run_id, seen[-1].sequence)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        release.set()

    # Another replica on the same store updates the agent meanwhile (its
    # lease of 30 s keeps it from claiming the dead run).
    other = await start_app(app_settings(fake_model, tool_server, store_url=store_url,
                                         data_dir=tmp_path))
    try:
        async with PilothouseClient(f"127.0.0.1:{other.port}") as updater:
            assert (await updater.update_agent("evolving", system_prompt="after the update")).version == 2
    finally:
        await other.stop(0)

    fake_model.responder.push(text_reply("resumed on the old version"))
    async with runtime_process(tmp_path, fake_model, tool_server, store_url, address) as (_, client):
        events = await collect(client.attach(session.id, run_id, seen[-1].sequence))
        assert events[0].HasField("run_resumed")
        assert events[-1].done.final_response == "resumed on the old version"
        assert system_prompt(fake_model.requests[-1]) == "before the update"
        assert (await client.get_run(run_id)).agent_version == 1

        fake_model.responder.push(text_reply("a new run on the new version"))
        reply = await client.send_to(session.id, "and now?")
        assert system_prompt(fake_model.requests[-1]) == "after the update"
        assert reply.run.agent_version == 2
