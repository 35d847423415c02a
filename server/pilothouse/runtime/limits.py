"""The runtime's tunables (`RuntimeLimits`), what a replica does with a run
whose process is gone (`ResumePolicy`), and the content check every user
and steering message passes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.loopcontext import DEFAULT_MAX_OUTPUT_CHARS
from pilothouse.runtime.toolphase import DEFAULT_DECISION_TIMEOUT_S

#: Default limit on one user or steering message, in bytes of UTF-8.
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024


class ResumePolicy(StrEnum):
    """What a replica does with a run whose process is gone."""

    RESUME = "resume"
    INTERRUPT = "interrupt"


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """Tunables, in bytes, seconds and counts.

    `event_retention_s`: how long a finished run stays in this process's
    memory (later reads come from the store); `event_log_retention_s`: how
    long the store keeps a finished run's events (its `done` stays);
    `resume_poll_s`: how often a replica looks for runs to take over;
    `event_flush_s`: the batching interval of the durable event log;
    `delegation_max_depth`: how deep delegations may nest (a child of a
    client's run is at depth 1); `delegation_max_runs`: child runs one run
    may start; `subscription_poll_s`: how often event subscriptions look
    for other replicas' events; `subscription_buffer`: events a subscriber
    may fall behind by before it is dropped.
    """

    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES
    lease_s: float = 30.0
    event_retention_s: float = 300.0
    event_log_retention_s: float = 7 * 24 * 3600.0
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    session_cache_size: int = 1000
    generate_titles: bool = True
    resume_policy: ResumePolicy = ResumePolicy.RESUME
    resume_poll_s: float = 2.0
    event_flush_s: float = 0.05
    stream_retries: int = 2
    #: Tools whose ToolExecutor's `requires_approval` an admin lifted
    #: (PILOTHOUSE_APPROVAL_EXEMPT_TOOLS, audited at start).
    approval_exempt_tools: frozenset[str] = frozenset()
    #: Finished runs kept in memory at most (besides `event_retention_s`):
    #: memory levels off under a steady stream of runs.
    finished_runs_kept: int = 1000
    #: Stored bytes one page of ListMessages or ExportSession holds at most.
    page_bytes: int = 4 * 1024 * 1024
    #: Characters one model round may produce (STOP_REASON_OUTPUT_LIMIT).
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    # Delegation and subscriptions (see `runtime.delegation`, `runtime.subscriptions`).
    delegation_max_depth: int = 3
    delegation_max_runs: int = 8
    subscription_poll_s: float = 0.25
    subscription_buffer: int = 1024


def check_content(content: str, limit: int, field: str = "content") -> None:
    """INVALID_ARGUMENT for empty or oversized content."""
    if not content.strip():
        raise InvalidArgumentError.field(field, "must not be empty")
    size = len(content.encode())
    if size > limit:
        raise InvalidArgumentError.field(field, f"is {size} bytes, over the limit of {limit}")
