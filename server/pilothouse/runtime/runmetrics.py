"""What the runtime reports to its metrics, at the moment the work ends:
a model round, a tool call, an approval decision, a run, a steering message
or a compaction. The agent loop, the tool phase and the run executor call a
`RunMetrics` next to the span helpers of `pilothouse.runtime.spans`, with
the same facts, so that metrics never depend on spans being recorded: with
nothing exporting traces, no span objects are made at all.

`pilothouse.app.metrics.RuntimeMetrics` implements it on OpenTelemetry
instruments; `NO_METRICS` records nothing (the default of a bare `Runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pilothouse.runtime.messages import Usage

#: `error.type` of a model round that was stopped, and of one that failed.
ROUND_CANCELLED = "cancelled"
ROUND_FAILED = "ModelError"


@dataclass(frozen=True, slots=True)
class ModelRound:
    """One model round as it ended. `seconds`: from the request to the end
    of the stream; `time_to_first_chunk_s`: None when no chunk came;
    `error_type`: None, `ROUND_CANCELLED` or `ROUND_FAILED`."""

    provider: str
    request_model: str
    response_model: str
    seconds: float
    usage: Usage | None = None
    time_to_first_chunk_s: float | None = None
    error_type: str | None = None


class RunMetrics(Protocol):
    """The sink of the runtime's measurements. Each method is called once
    per occurrence, on the event loop, and must not block or raise."""

    def model_round(self, round_: ModelRound) -> None:
        """A model round ended (each retry is a round of its own)."""
        ...

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        """A tool call ended: outcome `ok`, `error` or `cancelled`; seconds
        as the runtime saw it, approval waits included."""
        ...

    def approval_decided(self, tool: str, verdict: str) -> None:
        """A decision on a call that needed approval (verdict: the
        `Verdict` value, e.g. `approve`, `deny`)."""
        ...

    def run_ended(self, agent: str, stop_reason: str, seconds: float) -> None:
        """A run ended and its history is stored (stop reason: the
        `StopReason` value)."""
        ...

    def steered(self, agent: str) -> None:
        """A steering message was applied to a run of `agent`."""
        ...

    def compacted(self, agent: str) -> None:
        """A run of `agent` compacted its history."""
        ...


class NoMetrics:
    """A `RunMetrics` that records nothing."""

    def model_round(self, round_: ModelRound) -> None:
        return None

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        return None

    def approval_decided(self, tool: str, verdict: str) -> None:
        return None

    def run_ended(self, agent: str, stop_reason: str, seconds: float) -> None:
        return None

    def steered(self, agent: str) -> None:
        return None

    def compacted(self, agent: str) -> None:
        return None


NO_METRICS: RunMetrics = NoMetrics()
