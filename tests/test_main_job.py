"""The main job as a user runs it: real processes started by their console
entry points, the built-in scripted test model, and the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from pilothouse.testmodel import text_reply, tool_calls_reply
from tests.conftest import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_devstack_demo_runs_a_tool_using_conversation(tmp_path) -> None:
    env = dict(os.environ)
    env["PILOTHOUSE_DATA_DIR"] = str(tmp_path)
    env["PILOTHOUSE_METRICS_PORT"] = env["PILOTHOUSE_TOOLS_METRICS_PORT"] = "0"
    for key in ("PILOTHOUSE_MODEL_BASE_URL", "OPENAI_BASE_URL", "PILOTHOUSE_CONFIG"):
        env.pop(key, None)
    env["PILOTHOUSE_LISTEN_ADDRESS"] = f"127.0.0.1:{free_port()}"
    env["PILOTHOUSE_TOOLS_LISTEN_ADDRESS"] = f"127.0.0.1:{free_port()}"
    env.pop("PILOTHOUSE_TOOL_EXECUTORS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pilothouse.devstack", "demo"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    # Streamed events as the CLI prints them: calls, results, the answer.
    assert "→ calculate(" in out
    assert "← calculate" in out and "395" in out
    assert "→ current_time(" in out
    assert "scripted test model" in out
    assert "[done: text_response · 2 round(s)" in out
    # The second message printed as JSON lines in protobuf's JSON mapping.
    json_lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert json_lines[0]["runStarted"]["agent"] == "assistant"
    assert json_lines[-1]["done"]["stopReason"] == "STOP_REASON_TEXT_RESPONSE"
    assert [e["sequence"] for e in json_lines] == [str(n) for n in range(1, len(json_lines) + 1)]
    # The servers log to the files the demo names, not between the tokens.
    named = re.search(r"server logs: (\S+) and (\S+)", out)
    assert named is not None, out
    runtime_log, tools_log = Path(named[1]), Path(named[2])
    assert runtime_log.parent == tmp_path / "logs"
    assert "listening on port" in runtime_log.read_text()
    assert "tool call name=calculate" in tools_log.read_text()
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
    assert [line for line in (out + result.stderr).splitlines() if log_line.match(line)] == []
    # The model said it is a test model in the server log too.
    assert "scripted test model" in runtime_log.read_text()
    assert "runtime exited with 0" in out and "tools exited with 0" in out


async def test_cli_chat_json_against_a_running_server(app, fake_model, make_agent) -> None:
    import asyncio

    agent = await make_agent(("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", '{"text": "two words"}')]), text_reply("Two.")
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.client.cli", "--server", f"127.0.0.1:{app.port}",
        "chat", "--agent", agent, "--user", "erin", "--json", "How many words?",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    kinds = [next(k for k in e if k not in {"sessionId", "runId", "sequence", "time"}) for e in events]
    assert kinds[0] == "runStarted" and kinds[-1] == "done"
    assert "toolResult" in kinds
    result = next(e["toolResult"] for e in events if "toolResult" in e)
    assert json.loads(result["output"])["words"] == 2
    assert events[0]["runStarted"]["sender"] == "erin"


async def test_cli_reports_rpc_errors_with_the_status_code(app) -> None:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.client.cli", "--server", f"127.0.0.1:{app.port}",
        "chat", "--agent", "no-such-agent", "hello",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "NOT_FOUND" in stderr.decode() and "no-such-agent" in stderr.decode()


async def _cli(app, *args: str) -> tuple[int, str, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.client.cli", "--server", f"127.0.0.1:{app.port}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_decide_attach_steer_and_cancel(app, client, fake_model, session_of) -> None:
    import asyncio

    from pilothouse.testmodel import Pause, SSEReply

    session_id = await session_of(tools=("delete_records",))
    release = asyncio.Event()
    held = text_reply("All done.").events
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", '{"table": "logs"}')]),
        SSEReply([*held[:2], Pause(release), *held[2:]]),
    )
    stream = client.stream_to(session_id, "Clear the logs")
    async for event in stream:
        if event.HasField("approval_required"):
            request_id = event.approval_required.request_id
            break
    await stream.aclose()

    code, out, _ = await _cli(app, "decide", session_id, request_id, "approve")
    assert code == 0 and "decision sent to run" in out
    code, out, _ = await _cli(app, "steer", session_id, "and tell me when done")
    assert code == 0 and "steered run" in out
    run = app.runtime.active_run(session_id)
    follower = asyncio.create_task(_cli(app, "attach", session_id, "--run", run.id, "--json"))
    await wait_until(lambda: run.log.last_sequence > 0 and any(
        e.event.__class__.__name__ == "TextDelta" for e in run.log._events))
    code, out, _ = await _cli(app, "cancel", session_id, "--reason", "enough")
    assert code == 0 and "cancelled (cancelled)" in out
    release.set()
    code, out, _ = await follower
    events = [json.loads(line) for line in out.splitlines()]
    assert any(e.get("toolResult", {}).get("output") == "deleted all records of logs" for e in events)
    assert events[-1]["done"]["stopReason"] == "STOP_REASON_CANCELLED"
    # The steering either reached the model before the held round, or came
    # during it and, the run being cancelled, is reported as not applied.
    steered = [e["userSteered"] for e in events if "userSteered" in e]
    unapplied = events[-1]["done"].get("unappliedSteering", [])
    assert [s["content"] for s in steered + unapplied] == ["and tell me when done"]
    assert code == 0
