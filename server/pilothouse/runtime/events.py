"""Events of a run and the run's outcome (`AgentResponse`, `AgentStep`,
`StopReason`), and the decisions clients send about approvals and
questions. Plain data: every event is a dataclass that the durable event
log encodes (`pilothouse.runtime.eventcodec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pilothouse.runtime.messages import Message, ToolCall, Usage


class Verdict(StrEnum):
    NONE = ""
    APPROVE = "approve"
    DENY = "deny"
    APPROVE_ALWAYS = "approve_always"


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer to an approval (`verdict`, `reason`, and optionally
    `edited_arguments`: the JSON arguments to run the call with instead of
    the model's) or to a question (`selected_options`, `text`)."""

    request_id: str
    verdict: Verdict = Verdict.NONE
    reason: str = ""
    selected_options: tuple[str, ...] = ()
    text: str = ""
    edited_arguments: str = ""


class StopReason(StrEnum):
    """Why a run ended."""

    TEXT_RESPONSE = "text_response"
    MAX_ITERATIONS = "max_iterations"
    NO_ACTION = "no_action"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"
    INTERRUPTED = "interrupted"
    OUTPUT_LIMIT = "output_limit"
    #: A hook plugin stopped the run (`pilothouse.runtime.hooks.Stop`).
    GUARDRAIL = "guardrail"
    #: The model's finish reasons that end a run: "length" (the answer
    #: reached max_tokens), "content_filter", and a refusal.
    MAX_TOKENS = "max_tokens"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"
    #: Not an outcome: the run stopped at a safe point so that another
    #: replica (or the next start) resumes it. Never in a `done`.
    HANDOVER = "handover"


@dataclass(slots=True)
class ToolResult:
    """Outcome of one tool call: exactly one of `output` and `error` is set.
    `duration_ms` is wall time in milliseconds."""

    call_id: str
    name: str
    output: str | None = None
    error: str | None = None
    duration_ms: int = 0

    @property
    def text(self) -> str:
        """What the model reads: the output, or the error text."""
        return self.output if self.error is None else self.error  # type: ignore[return-value]


@dataclass(slots=True)
class AgentStep:
    """One completed model round."""

    message: Message
    usage: Usage
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)


@dataclass(slots=True)
class AgentResponse:
    """The outcome of a run. `iterations` counts completed rounds;
    `structured_output` is the final answer parsed as JSON when the agent
    asked for structured output and the answer matched its schema."""

    final_response: str
    iterations: int
    stop_reason: StopReason
    steps: list[AgentStep]
    model: str
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    unapplied_steering: list[UserSteered] = field(default_factory=list)
    structured_output: dict[str, Any] | None = None


@dataclass(slots=True)
class RunStarted:
    agent: str
    model: str
    content: str
    sender: str
    #: W3C traceparent of the context the run's spans are created in.
    traceparent: str = ""


@dataclass(slots=True)
class TextStart:
    pass


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class TextEnd:
    pass


@dataclass(slots=True)
class ThinkingStart:
    pass


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ThinkingEnd:
    pass


@dataclass(slots=True)
class ToolCallsBegin:
    """Tool names appeared in the stream; arguments may be partial."""

    tool_calls: list[ToolCall]


@dataclass(slots=True)
class ToolCallsStart:
    """The complete calls, about to be dispatched."""

    tool_calls: list[ToolCall]


@dataclass(slots=True)
class ToolCallsComplete:
    pass


@dataclass(slots=True)
class UserSteered:
    content: str
    sender: str


@dataclass(slots=True)
class UsageReported:
    """Usage of round `iteration` (1-based)."""

    iteration: int
    usage: Usage


@dataclass(slots=True)
class ApprovalRequired:
    """A tool call waits for a decision; `request_id` is made by the
    server, unique within the run; `expire_time` is Unix seconds."""

    request_id: str
    tool_call: ToolCall
    reason: str
    expire_time: float


@dataclass(slots=True)
class QuestionAsked:
    request_id: str
    question: str
    options: list[str]
    multi_select: bool
    expire_time: float


@dataclass(slots=True)
class DecisionApplied:
    request_id: str
    decision: Decision


@dataclass(slots=True)
class Heartbeat:
    """Sent on a quiet stream; never recorded in the event log."""


@dataclass(slots=True)
class RunQueued:
    position: int


@dataclass(slots=True)
class ContextUsage:
    estimated_prompt_tokens: int
    reported_prompt_tokens: int
    context_window: int


@dataclass(slots=True)
class Compacted:
    summary: str


@dataclass(slots=True)
class RunResumed:
    """The run was taken over after its process stopped (`reason`: its
    lease expired, or a draining replica handed it over) and goes on from
    its last checkpoint. `attempt` counts takeovers from 1;
    `last_stored_sequence` is the last event stored before the takeover:
    later events of the earlier attempt, if a client saw any, are void.
    The events that follow restate the round in progress (its
    `tool_calls_start`, the results already known, pending approvals and
    questions with their ids), or the interrupted model round is redone."""

    attempt: int
    last_stored_sequence: int
    reason: str


@dataclass(slots=True)
class RoundRetried:
    """A model stream failed after it began; the round is made again
    (`attempt` counts retries of this round from 1, `model` is the model
    used for the retry, the fallback model once retries run out). Clients
    drop the text and thinking of the failed attempt's open segment."""

    attempt: int
    cause: str
    error: str
    model: str


@dataclass(slots=True)
class Done:
    response: AgentResponse


Event = (
    RunStarted
    | TextStart
    | TextDelta
    | TextEnd
    | ThinkingStart
    | ThinkingDelta
    | ThinkingEnd
    | ToolCallsBegin
    | ToolCallsStart
    | ToolResult
    | ToolCallsComplete
    | UserSteered
    | UsageReported
    | ApprovalRequired
    | QuestionAsked
    | DecisionApplied
    | Heartbeat
    | RunQueued
    | ContextUsage
    | Compacted
    | RunResumed
    | RoundRetried
    | Done
)


@dataclass(slots=True)
class RunEvent:
    """An event as recorded in a run's event log: `sequence` counts from 1,
    `time` is Unix time in seconds."""

    session_id: str
    run_id: str
    sequence: int
    time: float
    event: Event
