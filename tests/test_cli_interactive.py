"""`pilothouse chat` as a person uses it, on a real pseudo-terminal
(pexpect): an interactive conversation on one session with Markdown
answers and tool calls as they run, Ctrl-C cancelling the run but not the
program, steering, re-attaching, approvals; and failed connections
explained in words."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path

import grpc
import pexpect
import pytest

from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from pilothouse.v1 import event_pb2, message_pb2
from tests.test_sdk import StatusServer

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")
PROMPT = "you> "


def held(text: str, release: asyncio.Event) -> SSEReply:
    """A text reply that stops after its first delta until `release` is set."""
    events = text_reply(text, chunk_size=4).events
    return SSEReply([*events[:2], Pause(release), *events[2:]])


class Terminal:
    """The CLI on a pseudo-terminal of 40 x 120; `expect` waits without
    blocking the event loop the servers of the test run on."""

    def __init__(self, port: int, *args: str, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
        env.update(TERM="xterm-256color", HOME=str(home), XDG_STATE_HOME=str(home / "state"),
                   PYTHONUNBUFFERED="1")
        self.child = pexpect.spawn(
            sys.executable, ["-m", "pilothouse.client.cli", "--server", f"127.0.0.1:{port}", *args],
            env=env, dimensions=(40, 120), encoding="utf-8", timeout=20,
        )
        self.seen = ""

    async def expect(self, pattern: str) -> str:
        """Wait for `pattern` (a regex over the raw output) and return the
        text since the previous match, escape sequences removed."""
        await self.child.expect(pattern, async_=True)
        chunk = self.child.before + (self.child.after if isinstance(self.child.after, str) else "")
        self.seen += chunk
        return ANSI.sub("", chunk)

    def text(self) -> str:
        return ANSI.sub("", self.seen)

    async def close(self) -> int:
        self.child.sendline("/quit")
        await self.child.expect(pexpect.EOF, async_=True)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def terminals(tmp_path):
    opened: list[Terminal] = []

    def open_terminal(port: int, *args: str) -> Terminal:
        terminal = Terminal(port, *args, home=tmp_path)
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.child.terminate(force=True)


async def _session_id(terminal: Terminal) -> str:
    banner = await terminal.expect(PROMPT)
    found = re.search(r"session ([0-9a-f]{32})", banner)
    assert found, banner
    return found[1]


async def test_a_conversation_with_markdown_tool_calls_and_history(
    app, client, fake_model, make_agent, terminals, tmp_path
):
    agent = await make_agent(("text_stats",))
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", '{"text": "two words"}')]),
        text_reply("It has **two** words:\n\n- two\n- words\n"),
        text_reply("Still the *same* session."),
    )
    terminal = terminals(app.port, "chat", "--agent", agent, "--user", "erin", "--new")
    session_id = await _session_id(terminal)

    terminal.child.sendline("How many words in 'two words'?")
    assert "→ text_stats(" in await terminal.expect(r"→ text_stats\(")
    result = await terminal.expect(r"\[done: text_response")
    assert "← text_stats" in result and '"words":2' in result
    assert "It has two words:" in result and "**" not in result  # Markdown, rendered
    assert "• two" in result and "• words" in result
    await terminal.expect(PROMPT)

    terminal.child.sendline("Again?")
    second = await terminal.expect(r"\[done: text_response")
    assert "Still the same session." in second and "*same*" not in second
    await terminal.expect(PROMPT)
    assert await terminal.close() == 0

    messages = await client.list_messages(session_id)
    users = [m.content for m in messages if m.role == message_pb2.ROLE_USER]
    assert users == ["How many words in 'two words'?", "Again?"]
    assert all(m.sender == "erin" for m in messages if m.role == message_pb2.ROLE_USER)
    history = (tmp_path / "state" / "pilothouse" / "chat_history").read_text()
    assert "How many words in 'two words'?" in history and "Again?" in history


async def test_ctrl_c_cancels_the_run_and_the_conversation_goes_on(
    app, client, fake_model, make_agent, terminals
):
    agent = await make_agent()
    release = asyncio.Event()
    fake_model.responder.push(held("Held mid-answer forever.", release), text_reply("Next one."))
    terminal = terminals(app.port, "chat", "--agent", agent, "--new")
    session_id = await _session_id(terminal)
    try:
        terminal.child.sendline("Start something long")
        await terminal.expect("Held")
        terminal.child.sendintr()
        cancelled = await terminal.expect(r"\[done: cancelled")
        assert "cancelling the run" in cancelled
        await terminal.expect(PROMPT)
        assert terminal.child.isalive()
        session = await client.get_session(session_id)
        assert session.last_run_stop_reason == event_pb2.STOP_REASON_CANCELLED
        assert session.active_run_id == ""
    finally:
        release.set()
    terminal.child.sendline("And now?")
    assert "Next one." in await terminal.expect(r"\[done: text_response")
    await terminal.expect(PROMPT)
    assert await terminal.close() == 0


async def test_typing_during_a_run_steers_it_and_attach_follows_another_clients_run(
    app, client, fake_model, make_agent, terminals
):
    agent = await make_agent()
    release = asyncio.Event()
    fake_model.responder.push(held("First answer.", release), text_reply("Weekend included."))
    terminal = terminals(app.port, "chat", "--agent", agent, "--new")
    session_id = await _session_id(terminal)

    terminal.child.sendline("Plan my week")
    await terminal.expect("Firs")
    terminal.child.sendline("/steer also the weekend")
    await terminal.expect(r"\[steering queued")
    release.set()
    steered = await terminal.expect(r"\[done: text_response")
    assert "[steered] also the weekend" in steered
    assert "Weekend included." in steered
    await terminal.expect(PROMPT)

    # Another client starts a run on the session; /attach follows it.
    release2 = asyncio.Event()
    fake_model.responder.push(held("From elsewhere.", release2))
    stream = client.stream_to(session_id, "Started by another client")
    await anext(stream)
    terminal.child.sendline("/attach")
    await terminal.expect(r"\[run [0-9a-f]{8}")
    release2.set()
    attached = await terminal.expect(r"\[done: text_response")
    assert "From elsewhere." in attached
    await terminal.expect(PROMPT)
    await stream.aclose()
    assert await terminal.close() == 0


async def test_approvals_are_answered_at_the_prompt(app, client, fake_model, make_agent, terminals):
    agent = await make_agent(("delete_records",))
    fake_model.responder.push(
        tool_calls_reply([("d1", "delete_records", '{"table": "logs"}')]), text_reply("Done."),
    )
    terminal = terminals(app.port, "chat", "--agent", agent, "--new")
    await _session_id(terminal)
    terminal.child.sendline("Clear the logs")
    asked = await terminal.expect(r"approve\? \[y\]es")
    assert "approval needed for delete_records" in asked
    terminal.child.sendline("y")
    answered = await terminal.expect(r"\[done: text_response")
    assert re.search(r"decision on req_\w+: approve", answered)
    assert "← delete_records" in answered and "deleted all records of logs" in answered
    await terminal.expect(PROMPT)
    assert await terminal.close() == 0


async def test_one_message_on_a_terminal_is_rendered_the_same_way(app, fake_model, make_agent, terminals):
    agent = await make_agent()
    fake_model.responder.push(text_reply("# Title\n\nSome *emphasis*."))
    terminal = terminals(app.port, "chat", "--agent", agent, "--new", "Render this")
    out = await terminal.expect(pexpect.EOF)
    assert "Title" in out and "# Title" not in out and "Some emphasis." in out
    assert "[done: text_response" in out and re.search(r"session: [0-9a-f]{32}", out)
    terminal.child.close()
    assert terminal.child.exitstatus == 0


# --- Failed connections, in words --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _cli(target: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.client.cli", "--server", target, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    return process.returncode, stderr.decode()


async def test_an_unreachable_runtime_is_explained(terminals):
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, stderr = await _cli(target, "agents", "list")
    assert code == 2
    assert f"Cannot reach the Pilothouse runtime at {target}: nothing accepts connections there" in stderr
    assert "make run" in stderr and "--server" in stderr
    assert "failed to connect to all addresses" not in stderr
    # The interactive chat says the same, before any prompt.
    terminal = terminals(int(target.split(":")[1]), "chat")
    out = await terminal.expect(pexpect.EOF)
    assert "Cannot reach the Pilothouse runtime" in out and PROMPT not in out


async def test_a_silent_server_is_a_deadline_in_words():
    with socket.socket() as silent:  # accepts TCP, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        code, stderr = await _cli(target, "--rpc-timeout", "0.5", "sessions", "list")
    assert code == 2
    assert f"The Pilothouse runtime at {target} did not answer within 0.5 s" in stderr
    assert "--rpc-timeout" in stderr


async def test_refused_credentials_are_explained():
    async with StatusServer(grpc.StatusCode.UNAUTHENTICATED, "token expired") as server:
        code, stderr = await _cli(server.target, "agents", "list")
    assert code == 2
    assert "did not accept this client's credentials: token expired" in stderr
    assert "token or client certificate" in stderr


async def test_other_errors_keep_their_code_and_reason(app):
    code, stderr = await _cli(f"127.0.0.1:{app.port}", "sessions", "messages", "no-such-session")
    assert code == 2
    assert "NOT_FOUND" in stderr and "(SESSION_NOT_FOUND)" in stderr
