"""`pilothouse chat` without a message: a conversation on one session.

At the prompt (line editing and history from readline): a message starts
a run; `/attach [RUN_ID]` follows the session's active run, `/steer TEXT`
and `/cancel` act on it, `/history` prints the conversation so far,
`/help`, `/quit` (or Ctrl-D). While a run streams, a typed line steers it
(`/steer TEXT` too), `/cancel` or Ctrl-C cancels it (a second Ctrl-C stops
following it) and the program goes on; approvals and questions are
answered on the next line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text

from pilothouse.client.client import PilothouseClient
from pilothouse.client.errors import FailedPreconditionError, PilothouseError
from pilothouse.client.events import ApprovalRequired, DecisionApplied, Done, QuestionAsked
from pilothouse.client.explain import explain
from pilothouse.client.run import RunHandle, VerdictName
from pilothouse.client.terminal import TerminalRenderer
from pilothouse.v1 import message_pb2, run_service_pb2

PROMPT = "you> "
HELP = """\
  a message        start a run (Markdown answers, tool calls as they run)
  /attach [RUN]    follow the session's active run (or RUN)
  /steer TEXT      steer the session's active run
  /cancel          cancel the session's active run
  /history         the conversation so far
  /quit            leave (or Ctrl-D)
while a run streams: type to steer it, /cancel or Ctrl-C to cancel it"""
_ANSWERS: dict[str, VerdictName] = {
    "y": "approve", "yes": "approve", "n": "deny", "no": "deny", "a": "always", "always": "always",
}


def _history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pilothouse" / "chat_history"


class _Lines:
    """Whole lines typed while a run streams (the terminal echoes them)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._buffer = b""
        self._fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        if self._fd is not None:
            asyncio.get_running_loop().add_reader(self._fd, self._read)

    def _read(self) -> None:
        assert self._fd is not None
        data = os.read(self._fd, 4096)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._on_line(line.decode(errors="replace"))

    def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)


class InteractiveChat:
    """The conversation loop; `run` returns the exit code."""

    def __init__(
        self,
        client: PilothouseClient,
        session_id: str,
        user: str,
        options: run_service_pb2.RunOptions,
        console: Console | None = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.user = user
        self.options = options
        self.console = console or Console(highlight=False)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- The prompt -------------------------------------------------------

    def run(self, runner: asyncio.Runner) -> int:
        readline = _readline()
        earlier = runner.run(self._count_messages())
        self.console.print(Text(
            f"session {self.session_id}"
            + (f" · {earlier} earlier messages (/history)" if earlier else "")
            + " · /help for commands, Ctrl-D to leave", style="dim"))
        try:
            while True:
                try:
                    line = input(PROMPT).strip()
                except EOFError:
                    self.console.print()
                    return 0
                except KeyboardInterrupt:
                    self.console.print()
                    continue
                if line in ("/quit", "/exit"):
                    return 0
                if line:
                    try:
                        runner.run(self._command(line))
                    except KeyboardInterrupt:
                        self.console.print()
                    except PilothouseError as error:
                        self._error(error)
        finally:
            if readline is not None:
                with contextlib.suppress(OSError):
                    _history_file().parent.mkdir(parents=True, exist_ok=True)
                    readline.write_history_file(_history_file())

    def _error(self, error: PilothouseError) -> None:
        if isinstance(error, FailedPreconditionError) and "active_run_id" in error.metadata:
            self.console.print(Text(
                f"A run is already active on this session ({error.metadata['active_run_id']}): "
                "/attach to follow it, /cancel to stop it.", style="yellow"))
            return
        self.console.print(Text(explain(error, self.client.target, self.client.timeout), style="red"))

    async def _count_messages(self) -> int:
        return (await self.client.get_session(self.session_id)).message_count

    async def _command(self, line: str) -> None:
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if command == "/help":
            self.console.print(Text(HELP, style="dim"))
        elif command == "/history":
            await self._history()
        elif command == "/attach":
            await self.follow(self.client.get_run_handle(self.session_id, rest))
        elif command == "/steer" and rest:
            run_id = await self.client.steer_session(self.session_id, rest, self.user)
            self.console.print(Text(f"steered run {run_id}", style="dim"))
        elif command == "/cancel":
            reply = await self.client.cancel(self.session_id, reason="cancelled from the terminal")
            state = "had already finished" if reply.already_finished else "cancelled"
            self.console.print(Text(f"run {reply.run_id} {state}", style="dim"))
        elif command.startswith("/"):
            self.console.print(Text(f"unknown command {command}; /help lists them", style="yellow"))
        else:
            await self.send(line)

    async def send(self, message: str) -> Done | None:
        """Start a run with `message` and follow it; its `Done`, or None
        when the user stopped following it."""
        handle = await self.client.start_run(self.session_id, message, self.user, options=self.options)
        await self.follow(handle)
        return handle.done

    async def _history(self) -> None:
        for message in await self.client.list_messages(self.session_id):
            if message.role == message_pb2.ROLE_USER:
                self.console.print(Text(f"{message.sender or 'user'}> {message.content}", style="bold"))
            elif message.role == message_pb2.ROLE_ASSISTANT:
                for call in message.tool_calls:
                    self.console.print(Text(f"→ {call.name}({call.arguments_json})", style="cyan"))
                if message.content:
                    self.console.print(Markdown(message.content))
            elif message.role == message_pb2.ROLE_TOOL:
                self.console.print(Text(f"← {message.name}: {message.content[:200]}", style="cyan"))

    # --- A run ------------------------------------------------------------

    async def follow(self, handle: RunHandle) -> None:
        """Show `handle`'s events until `done`, taking typed lines and
        Ctrl-C as steering, cancellation and decisions meanwhile."""
        loop = asyncio.get_running_loop()
        renderer = TerminalRenderer(self.console)
        waiting: list[ApprovalRequired | QuestionAsked] = []
        interrupts = 0

        async def consume() -> None:
            async for event in handle.events():
                renderer.show(event)
                if isinstance(event, ApprovalRequired):
                    waiting.append(event)
                    renderer.note("approve? [y]es / [n]o / [a]lways, or a reason to deny", "yellow")
                elif isinstance(event, QuestionAsked):
                    waiting.append(event)
                    renderer.note("your answer" + (" (one of the options, or text)"
                                                   if event.options else "") + ":", "yellow")
                elif isinstance(event, DecisionApplied):
                    waiting[:] = [w for w in waiting if w.request_id != event.request_id]

        task = asyncio.create_task(consume())

        def spawn(coroutine: Coroutine[Any, Any, object]) -> None:
            async def guarded() -> None:
                try:
                    await coroutine
                except PilothouseError as error:
                    renderer.pause()
                    self._error(error)

            job = asyncio.create_task(guarded())
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                renderer.note("[cancelling the run; Ctrl-C again stops following it]", "yellow")
                spawn(handle.cancel("cancelled from the terminal"))
            else:
                task.cancel()

        def on_line(line: str) -> None:
            line = line.strip()
            if not line:
                return
            if waiting:
                spawn(self._answer(handle, waiting.pop(0), line))
            elif line == "/cancel":
                on_interrupt()
            elif line.startswith("/") and not line.startswith("/steer "):
                renderer.note("while a run streams: type to steer it, /cancel or Ctrl-C to cancel it")
            else:
                spawn(steer(line.removeprefix("/steer ").strip()))

        async def steer(content: str) -> None:
            await handle.steer(content, self.user)
            renderer.note("[steering queued for the next model round]")

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        lines = _Lines(on_line)
        try:
            await asyncio.wait([task])
        finally:
            lines.close()
            loop.remove_signal_handler(signal.SIGINT)
            renderer.close()
        if task.cancelled():
            self.console.print(Text(f"[stopped following run {handle.run_id}]", style="yellow"))
        elif (error := task.exception()) is not None:
            raise error

    async def _answer(self, handle: RunHandle, ask: ApprovalRequired | QuestionAsked, line: str) -> None:
        if isinstance(ask, ApprovalRequired):
            verdict = _ANSWERS.get(line.lower())
            if verdict is None:  # anything else is a reason to deny
                await handle.decide(ask.request_id, "deny", reason=line)
            else:
                await handle.decide(ask.request_id, verdict)
            return
        chosen = [o.strip() for o in line.split(",") if o.strip() in ask.options]
        if chosen:
            await handle.decide(ask.request_id, selected_options=chosen)
        else:
            await handle.decide(ask.request_id, text=line)


def _readline() -> Any:
    """readline with the saved history, or None where it is missing."""
    try:
        import readline
    except ImportError:
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(_history_file())
    readline.set_history_length(1000)
    return readline
