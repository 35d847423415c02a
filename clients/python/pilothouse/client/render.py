"""Render a run's events as plain lines (pipes, logs, `make demo`), as
they arrive; `terminal.TerminalRenderer` is the rich one for terminals."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from google.protobuf import json_format

from pilothouse.v1 import event_pb2

_STOP_NAMES = {v.number: v.name.removeprefix("STOP_REASON_").lower()
               for v in event_pb2.StopReason.DESCRIPTOR.values}


def event_json(event: event_pb2.AgentEvent) -> str:
    """One event as one line of protobuf's JSON mapping (as grpcurl shows it)."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":"), ensure_ascii=False)


def stop_reason_name(value: int) -> str:
    """`STOP_REASON_TEXT_RESPONSE` → "text_response"."""
    return _STOP_NAMES.get(value, str(value))


def short(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class EventPrinter:
    """Prints text as it streams, reasoning dimmed, tool calls and results
    as they happen, and a summary line at the end."""

    def __init__(self, out: TextIO = sys.stdout, color: bool | None = None) -> None:
        self.out = out
        self.color = out.isatty() if color is None else color
        self._at_line_start = True

    def _style(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self._at_line_start = text.endswith("\n")
            self.out.flush()

    def _line(self, text: str) -> None:
        if not self._at_line_start:
            self._write("\n")
        self._write(text + "\n")

    def print(self, event: event_pb2.AgentEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "run_started":
            self._line(self._style("2", f"[run {event.run_id[:8]} · agent {event.run_started.agent} · model {event.run_started.model}]"))
        elif kind == "thinking_start":
            self._line(self._style("2;3", "thinking: "))
            self._at_line_start = False
        elif kind == "thinking_delta":
            self._write(self._style("2;3", event.thinking_delta.text))
        elif kind in ("thinking_end", "text_end"):
            self._line("")
        elif kind == "text_delta":
            self._write(event.text_delta.text)
        elif kind == "tool_calls_start":
            for call in event.tool_calls_start.tool_calls:
                self._line(self._style("36", f"→ {call.name}({short(call.arguments_json, 120)})"))
        elif kind == "tool_result":
            result = event.tool_result
            if result.WhichOneof("outcome") == "error":
                body = self._style("31", f"error: {short(result.error)}")
            else:
                body = short(result.output)
            self._line(self._style("36", f"← {result.name} [{result.duration_ms} ms] ") + body)
        elif kind == "approval_required":
            ask = event.approval_required
            self._line(self._style("33", f"? approval needed for {ask.tool_call.name}"
                                   f"({short(ask.tool_call.arguments_json, 120)}): {ask.reason} "
                                   f"[request {ask.request_id}]"))
        elif kind == "question_asked":
            question = event.question_asked
            options = f" options: {', '.join(question.options)}" if question.options else ""
            self._line(self._style("33", f"? {question.question}{options} [request {question.request_id}]"))
        elif kind == "decision_applied":
            applied = event.decision_applied.decision
            verdict = event_pb2.Verdict.Name(applied.verdict).removeprefix("VERDICT_").lower()
            answer = verdict if applied.verdict else ", ".join(applied.selected_options) or applied.text
            self._line(self._style("33", f"✓ decision on {applied.request_id}: {answer}"))
        elif kind == "run_queued":
            self._line(self._style("2", f"[queued behind {event.run_queued.position} run(s)]"))
        elif kind == "compacted":
            self._line(self._style("2", "[history compacted]"))
        elif kind == "user_steered":
            self._line(self._style("33", f"[steered] {event.user_steered.content}"))
        elif kind == "done":
            done = event.done
            reason = stop_reason_name(done.stop_reason)
            summary = (
                f"[done: {reason} · {done.iterations} round(s) · "
                f"{done.usage.prompt_tokens} prompt + {done.usage.completion_tokens} completion tokens]"
            )
            if done.error:
                self._line(self._style("31", f"error: {done.error}"))
            self._line(self._style("2", summary))
