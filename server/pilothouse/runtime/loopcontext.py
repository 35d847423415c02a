"""What the agent loop works with: the run's context (`LoopContext`), the
journal it checkpoints to (`LoopJournal`), and where a resumed run picks
up (`Resume`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pilothouse.runtime.control import RunControl
from pilothouse.runtime.events import AgentStep
from pilothouse.runtime.hookchain import RunHooks
from pilothouse.runtime.messages import Message, Usage
from pilothouse.runtime.runmetrics import NO_METRICS, RunMetrics
from pilothouse.runtime.toolphase import DEFAULT_DECISION_TIMEOUT_S, RoundState, ToolJournal

#: Retries of a model round whose stream failed after it began.
DEFAULT_STREAM_RETRIES = 2
#: Most characters (text, reasoning and tool-call arguments) one model round
#: may produce before its stream is closed.
DEFAULT_MAX_OUTPUT_CHARS = 4 * 1024 * 1024


class LoopJournal(ToolJournal, Protocol):
    """Where the loop checkpoints the run (see `pilothouse.runtime.journal`).
    Every method returns once its write is durable."""

    async def steered(self, messages: list[Message]) -> None:
        """Steering messages were appended to the history."""
        ...

    async def round_done(self, messages: list[Message], step: AgentStep) -> None:
        """A round completed: `messages` (the assistant message and its tool
        results, in call order) were appended to the history."""
        ...

    async def compacted(self, summary: str) -> None:
        """The history was replaced by `summary`."""
        ...


class NullJournal:
    """A journal that stores nothing (a run without durability)."""

    async def steered(self, messages: list[Message]) -> None:
        return None

    async def round_done(self, messages: list[Message], step: AgentStep) -> None:
        return None

    async def compacted(self, summary: str) -> None:
        return None

    async def tool_round(self, state: RoundState) -> None:
        return None


@dataclass(slots=True)
class Resume:
    """Where a resumed run picks up: the rounds it completed, its usage so
    far, and the round whose tool phase was in progress, if any."""

    steps: list[AgentStep] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    round: RoundState | None = None


@dataclass(slots=True)
class LoopContext:
    """The run the loop works for. `remember_approval(tool)` persists an
    "approve always"; `stream_retries` bounds retries of a failed model
    stream; `usage` is the run's total so far (read by the caller when the
    run ends abnormally); `hooks` are the hook plugins bound to the run;
    `metrics` receives its measurements."""

    session_id: str
    run_id: str
    control: RunControl
    journal: LoopJournal = field(default_factory=NullJournal)
    remember_approval: Callable[[str], Awaitable[None]] | None = None
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    stream_retries: int = DEFAULT_STREAM_RETRIES
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    resume: Resume | None = None
    principal: str = ""
    principal_roles: tuple[str, ...] = ()
    usage: Usage = field(default_factory=Usage)
    hooks: RunHooks | None = None
    metrics: RunMetrics = NO_METRICS
