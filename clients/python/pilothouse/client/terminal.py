"""Render a run on a terminal with rich: a spinner while the model thinks
or tools run, tool calls and results as they happen, answers rendered as
Markdown while they stream, and a summary line at the end."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.status import Status
from rich.text import Text

from pilothouse.client.events import (
    ApprovalRequired,
    Compacted,
    DecisionApplied,
    Done,
    Event,
    QuestionAsked,
    RunQueued,
    RunStarted,
    TextDelta,
    TextEnd,
    TextStart,
    ThinkingDelta,
    ThinkingEnd,
    ThinkingStart,
    ToolCallsBegin,
    ToolCallsComplete,
    ToolCallsStart,
    ToolResult,
    UserSteered,
)
from pilothouse.client.render import short, stop_reason_name
from pilothouse.v1 import event_pb2


class TerminalRenderer:
    """Feed it a run's typed events with `show`; `pause` clears the
    spinner before the caller prints or asks something; `close` ends any
    live display."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None
        self._live: Live | None = None
        self._text = ""
        self._thinking = ""

    def _spin(self, message: str) -> None:
        self._end_live()
        if self._status is None:
            self._status = self.console.status(message, spinner="dots")
            self._status.start()
        else:
            self._status.update(message)

    def pause(self) -> None:
        """Stop the spinner (it comes back with the next event that waits)."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _end_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self.pause()
        self._end_live()

    def note(self, text: str, style: str = "dim") -> None:
        """Print a line of the client's own (not an event) between events."""
        self.pause()
        self._end_live()
        self.console.print(Text(text, style=style))

    def show(self, event: Event) -> None:
        match event:
            case RunStarted(agent=agent, model=model):
                self.note(f"[run {event.run_id[:8]} · agent {agent} · model {model}]")
                self._spin("thinking…")
            case ThinkingStart():
                self._thinking = ""
                self._spin("thinking…")
            case ThinkingDelta(text=text):
                self._thinking = (self._thinking + text)[-200:]
                tail = " ".join(self._thinking.split())[-60:]
                self._spin(f"thinking… [dim italic]{tail}[/]")
            case ThinkingEnd():
                self._spin("thinking…")
            case TextStart():
                self.pause()
                self._text = ""
                self._live = Live(Markdown(""), console=self.console, refresh_per_second=12,
                                  vertical_overflow="visible")
                self._live.start()
            case TextDelta(text=text):
                self._text += text
                if self._live is None:  # joined mid-segment (re-attach)
                    self.show(TextStart(event.session_id, event.run_id, event.sequence, event.raw))
                assert self._live is not None
                self._live.update(Markdown(self._text))
            case TextEnd():
                if self._live is not None:
                    self._live.update(Markdown(self._text), refresh=True)
                self._end_live()
            case ToolCallsBegin():
                self._spin("calling tools…")
            case ToolCallsStart(tool_calls=calls):
                for call in calls:
                    self.note(f"→ {call.name}({short(call.arguments_json, 120)})", "cyan")
                names = ", ".join(call.name for call in calls)
                self._spin(f"running {names}…")
            case ToolResult(name=name, duration_ms=duration_ms):
                failed = event.data.WhichOneof("outcome") == "error"
                body = f"error: {short(event.error)}" if failed else short(event.output)
                line = Text(f"← {name} [{duration_ms} ms] ", style="cyan")
                line.append(body, style="red" if failed else "")
                self.pause()
                self.console.print(line)
            case ToolCallsComplete():
                self._spin("thinking…")
            case ApprovalRequired(tool_call=call, reason=reason):
                self.note(f"? approval needed for {call.name}({short(call.arguments_json, 120)})"
                          f"{': ' + reason if reason else ''}", "yellow")
            case QuestionAsked(question=question, options=options):
                choices = f" (options: {', '.join(options)})" if options else ""
                self.note(f"? {question}{choices}", "yellow")
            case DecisionApplied():
                applied = event.data.decision
                verdict = event_pb2.Verdict.Name(applied.verdict).removeprefix("VERDICT_").lower()
                answer = verdict if applied.verdict else ", ".join(applied.selected_options) or applied.text
                self.note(f"✓ decision on {applied.request_id}: {answer}", "yellow")
                self._spin("working…")
            case UserSteered(content=content):
                self.note(f"[steered] {content}", "yellow")
            case RunQueued(position=position):
                self._spin(f"queued behind {position} run(s)…")
            case Compacted():
                self.note("[history compacted]")
            case Done():
                self.close()
                if event.error:
                    self.note(f"error: {event.error}", "red")
                usage = event.usage
                self.note(f"[done: {stop_reason_name(event.stop_reason)} · {event.iterations} round(s) · "
                          f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]")
            case _:
                pass
