"""Typed run events, one class per member of the `event` oneof of
`pilothouse.v1.AgentEvent`: `kind` is the member's name, the payload's
fields are properties, `.data` is the payload message and `.raw` the whole
protobuf event.

    match event:
        case TextDelta(text=text): print(text, end="")
        case ToolResult(name=name, output=output): ...
        case Done(stop_reason=reason): ...

Generated from protos/pilothouse/v1/event.proto by clients/python/gen_events.py
(`make gen`): do not edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import struct_pb2, timestamp_pb2

from pilothouse.client._event_base import EventBase, UnknownEvent
from pilothouse.v1 import event_pb2, tool_pb2

__all__ = [
    "EVENT_TYPES",
    "ApprovalRequired",
    "Compacted",
    "ContextUsage",
    "DecisionApplied",
    "Done",
    "Event",
    "EventBase",
    "Heartbeat",
    "QuestionAsked",
    "RoundRetried",
    "RunQueued",
    "RunResumed",
    "RunStarted",
    "TextDelta",
    "TextEnd",
    "TextStart",
    "ThinkingDelta",
    "ThinkingEnd",
    "ThinkingStart",
    "ToolCallsBegin",
    "ToolCallsComplete",
    "ToolCallsStart",
    "ToolResult",
    "UnknownEvent",
    "Usage",
    "UserSteered",
    "event_from_proto",
]


@dataclass(frozen=True, slots=True)
class RunStarted(EventBase):
    """First event of every run. (`run_started`; payload `RunStarted`)"""

    kind: Literal["run_started"] = field(default="run_started", init=False)
    __match_args__ = ("agent", "model", "content", "sender", "traceparent")

    @property
    def data(self) -> event_pb2.RunStarted:
        """The payload message."""
        return self.raw.run_started

    @property
    def agent(self) -> str:
        """Agent that runs."""
        return self.raw.run_started.agent

    @property
    def model(self) -> str:
        """Model it runs on."""
        return self.raw.run_started.model

    @property
    def content(self) -> str:
        """The user message that started the run."""
        return self.raw.run_started.content

    @property
    def sender(self) -> str:
        """Its sender."""
        return self.raw.run_started.sender

    @property
    def traceparent(self) -> str:
        """The W3C trace context (`traceparent` header value) the run's spans are created in:
        its trace id is the trace of the run's `invoke_agent`, model and tool spans. Empty
        when the runtime does not trace.
        """
        return self.raw.run_started.traceparent


@dataclass(frozen=True, slots=True)
class TextStart(EventBase):
    """A text segment opens. (`text_start`; payload `TextStart`)"""

    kind: Literal["text_start"] = field(default="text_start", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.TextStart:
        """The payload message."""
        return self.raw.text_start


@dataclass(frozen=True, slots=True)
class TextDelta(EventBase):
    """A piece of text. (`text_delta`; payload `TextDelta`)"""

    kind: Literal["text_delta"] = field(default="text_delta", init=False)
    __match_args__ = ("text",)

    @property
    def data(self) -> event_pb2.TextDelta:
        """The payload message."""
        return self.raw.text_delta

    @property
    def text(self) -> str:
        """The text piece."""
        return self.raw.text_delta.text


@dataclass(frozen=True, slots=True)
class TextEnd(EventBase):
    """A text segment closes. (`text_end`; payload `TextEnd`)"""

    kind: Literal["text_end"] = field(default="text_end", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.TextEnd:
        """The payload message."""
        return self.raw.text_end


@dataclass(frozen=True, slots=True)
class ThinkingStart(EventBase):
    """A reasoning segment opens. (`thinking_start`; payload `ThinkingStart`)"""

    kind: Literal["thinking_start"] = field(default="thinking_start", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.ThinkingStart:
        """The payload message."""
        return self.raw.thinking_start


@dataclass(frozen=True, slots=True)
class ThinkingDelta(EventBase):
    """A piece of reasoning. (`thinking_delta`; payload `ThinkingDelta`)"""

    kind: Literal["thinking_delta"] = field(default="thinking_delta", init=False)
    __match_args__ = ("text",)

    @property
    def data(self) -> event_pb2.ThinkingDelta:
        """The payload message."""
        return self.raw.thinking_delta

    @property
    def text(self) -> str:
        """The reasoning piece."""
        return self.raw.thinking_delta.text


@dataclass(frozen=True, slots=True)
class ThinkingEnd(EventBase):
    """A reasoning segment closes. (`thinking_end`; payload `ThinkingEnd`)"""

    kind: Literal["thinking_end"] = field(default="thinking_end", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.ThinkingEnd:
        """The payload message."""
        return self.raw.thinking_end


@dataclass(frozen=True, slots=True)
class ToolCallsBegin(EventBase):
    """Tool names appeared in the model stream. (`tool_calls_begin`; payload `ToolCallsBegin`)"""

    kind: Literal["tool_calls_begin"] = field(default="tool_calls_begin", init=False)
    __match_args__ = ("tool_calls",)

    @property
    def data(self) -> event_pb2.ToolCallsBegin:
        """The payload message."""
        return self.raw.tool_calls_begin

    @property
    def tool_calls(self) -> Sequence[tool_pb2.ToolCall]:
        """Calls seen so far."""
        return self.raw.tool_calls_begin.tool_calls


@dataclass(frozen=True, slots=True)
class ToolCallsStart(EventBase):
    """Tool calls are about to be dispatched. (`tool_calls_start`; payload `ToolCallsStart`)"""

    kind: Literal["tool_calls_start"] = field(default="tool_calls_start", init=False)
    __match_args__ = ("tool_calls",)

    @property
    def data(self) -> event_pb2.ToolCallsStart:
        """The payload message."""
        return self.raw.tool_calls_start

    @property
    def tool_calls(self) -> Sequence[tool_pb2.ToolCall]:
        """The complete calls, in call order."""
        return self.raw.tool_calls_start.tool_calls


@dataclass(frozen=True, slots=True)
class ToolResult(EventBase):
    """One tool call finished (completion order). (`tool_result`; payload `ToolResult`)"""

    kind: Literal["tool_result"] = field(default="tool_result", init=False)
    __match_args__ = ("call_id", "name", "output", "error", "duration_ms")

    @property
    def data(self) -> event_pb2.ToolResult:
        """The payload message."""
        return self.raw.tool_result

    @property
    def call_id(self) -> str:
        """Id of the call it answers."""
        return self.raw.tool_result.call_id

    @property
    def name(self) -> str:
        """Tool name."""
        return self.raw.tool_result.name

    @property
    def output(self) -> str:
        """The tool's output."""
        return self.raw.tool_result.output

    @property
    def error(self) -> str:
        """Why the call failed (tool error, executor down, deadline, ...)."""
        return self.raw.tool_result.error

    @property
    def duration_ms(self) -> int:
        """Wall time of the call, in milliseconds."""
        return self.raw.tool_result.duration_ms


@dataclass(frozen=True, slots=True)
class ToolCallsComplete(EventBase):
    """All tool calls of the round finished. (`tool_calls_complete`; payload
    `ToolCallsComplete`)
    """

    kind: Literal["tool_calls_complete"] = field(default="tool_calls_complete", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.ToolCallsComplete:
        """The payload message."""
        return self.raw.tool_calls_complete


@dataclass(frozen=True, slots=True)
class UserSteered(EventBase):
    """Steering content was appended to the history. (`user_steered`; payload `UserSteered`)"""

    kind: Literal["user_steered"] = field(default="user_steered", init=False)
    __match_args__ = ("content", "sender")

    @property
    def data(self) -> event_pb2.UserSteered:
        """The payload message."""
        return self.raw.user_steered

    @property
    def content(self) -> str:
        """The steering content."""
        return self.raw.user_steered.content

    @property
    def sender(self) -> str:
        """Its sender."""
        return self.raw.user_steered.sender


@dataclass(frozen=True, slots=True)
class Usage(EventBase):
    """Usage of one model round. (`usage`; payload `UsageReported`)"""

    kind: Literal["usage"] = field(default="usage", init=False)
    __match_args__ = ("iteration", "usage")

    @property
    def data(self) -> event_pb2.UsageReported:
        """The payload message."""
        return self.raw.usage

    @property
    def iteration(self) -> int:
        """1-based round number within the run."""
        return self.raw.usage.iteration

    @property
    def usage(self) -> event_pb2.Usage:
        """Usage the model reported for that round."""
        return self.raw.usage.usage


@dataclass(frozen=True, slots=True)
class Done(EventBase):
    """Last event of every run, sent after the history was stored. (`done`; payload
    `AgentResponse`)
    """

    kind: Literal["done"] = field(default="done", init=False)
    __match_args__ = ("final_response", "iterations", "stop_reason", "error", "steps", "model", "usage", "unapplied_steering", "structured_output")

    @property
    def data(self) -> event_pb2.AgentResponse:
        """The payload message."""
        return self.raw.done

    @property
    def final_response(self) -> str:
        """The final text answer; empty when the run ended without one."""
        return self.raw.done.final_response

    @property
    def iterations(self) -> int:
        """Number of model rounds that completed."""
        return self.raw.done.iterations

    @property
    def stop_reason(self) -> event_pb2.StopReason.ValueType:
        """Why the run ended."""
        return self.raw.done.stop_reason

    @property
    def error(self) -> str:
        """For STOP_REASON_ERROR: what failed."""
        return self.raw.done.error

    @property
    def steps(self) -> Sequence[event_pb2.AgentStep]:
        """Every completed round."""
        return self.raw.done.steps

    @property
    def model(self) -> str:
        """Model name the run used."""
        return self.raw.done.model

    @property
    def usage(self) -> event_pb2.Usage:
        """Usage summed over the rounds."""
        return self.raw.done.usage

    @property
    def unapplied_steering(self) -> Sequence[event_pb2.UserSteered]:
        """Steering that arrived after the run's last model round and was not applied (only
        with LATE_STEERING_POLICY_RETURN).
        """
        return self.raw.done.unapplied_steering

    @property
    def structured_output(self) -> struct_pb2.Struct:
        """The final answer parsed as JSON when the agent (or the run's overrides) set
        `response_json_schema` and it validated against it; the same answer is in
        `final_response` as text. Numbers are doubles (a Struct's only number type): read
        integers from `final_response` when they may exceed 2^53.
        """
        return self.raw.done.structured_output


@dataclass(frozen=True, slots=True)
class ApprovalRequired(EventBase):
    """A tool call waits for approval. (`approval_required`; payload `ApprovalRequired`)"""

    kind: Literal["approval_required"] = field(default="approval_required", init=False)
    __match_args__ = ("request_id", "tool_call", "reason", "expire_time")

    @property
    def data(self) -> event_pb2.ApprovalRequired:
        """The payload message."""
        return self.raw.approval_required

    @property
    def request_id(self) -> str:
        """Id to answer with (`Decision.request_id`): made by the server, unique within the
        run, the same when the request is asked again after a resume. `tool_call.id` names
        the call.
        """
        return self.raw.approval_required.request_id

    @property
    def tool_call(self) -> tool_pb2.ToolCall:
        """The call waiting."""
        return self.raw.approval_required.tool_call

    @property
    def reason(self) -> str:
        """Why approval is needed ("agent policy", "executor metadata", ...)."""
        return self.raw.approval_required.reason

    @property
    def expire_time(self) -> timestamp_pb2.Timestamp:
        """When an unanswered request is denied."""
        return self.raw.approval_required.expire_time


@dataclass(frozen=True, slots=True)
class QuestionAsked(EventBase):
    """The agent asks the user a question. (`question_asked`; payload `QuestionAsked`)"""

    kind: Literal["question_asked"] = field(default="question_asked", init=False)
    __match_args__ = ("request_id", "question", "options", "multi_select", "expire_time")

    @property
    def data(self) -> event_pb2.QuestionAsked:
        """The payload message."""
        return self.raw.question_asked

    @property
    def request_id(self) -> str:
        """Id to answer with (`Decision.request_id`)."""
        return self.raw.question_asked.request_id

    @property
    def question(self) -> str:
        """The question."""
        return self.raw.question_asked.question

    @property
    def options(self) -> Sequence[str]:
        """Choices offered; empty for a free-text answer."""
        return self.raw.question_asked.options

    @property
    def multi_select(self) -> bool:
        """Whether several options may be chosen."""
        return self.raw.question_asked.multi_select

    @property
    def expire_time(self) -> timestamp_pb2.Timestamp:
        """When an unanswered question times out."""
        return self.raw.question_asked.expire_time


@dataclass(frozen=True, slots=True)
class DecisionApplied(EventBase):
    """A decision was applied. (`decision_applied`; payload `DecisionApplied`)"""

    kind: Literal["decision_applied"] = field(default="decision_applied", init=False)
    __match_args__ = ("request_id", "decision")

    @property
    def data(self) -> event_pb2.DecisionApplied:
        """The payload message."""
        return self.raw.decision_applied

    @property
    def request_id(self) -> str:
        """The request it answers."""
        return self.raw.decision_applied.request_id

    @property
    def decision(self) -> event_pb2.Decision:
        """The decision as applied (a timeout is a denial with reason "timeout")."""
        return self.raw.decision_applied.decision


@dataclass(frozen=True, slots=True)
class Heartbeat(EventBase):
    """The stream is alive while the run is quiet (not logged). (`heartbeat`; payload
    `Heartbeat`)
    """

    kind: Literal["heartbeat"] = field(default="heartbeat", init=False)
    __match_args__ = ()

    @property
    def data(self) -> event_pb2.Heartbeat:
        """The payload message."""
        return self.raw.heartbeat


@dataclass(frozen=True, slots=True)
class RunQueued(EventBase):
    """The run waits behind the session's active run. (`run_queued`; payload `RunQueued`)"""

    kind: Literal["run_queued"] = field(default="run_queued", init=False)
    __match_args__ = ("position",)

    @property
    def data(self) -> event_pb2.RunQueued:
        """The payload message."""
        return self.raw.run_queued

    @property
    def position(self) -> int:
        """Runs ahead of this one, including the active one."""
        return self.raw.run_queued.position


@dataclass(frozen=True, slots=True)
class ContextUsage(EventBase):
    """Context window use after a model round. (`context_usage`; payload `ContextUsage`)"""

    kind: Literal["context_usage"] = field(default="context_usage", init=False)
    __match_args__ = ("estimated_prompt_tokens", "reported_prompt_tokens", "context_window")

    @property
    def data(self) -> event_pb2.ContextUsage:
        """The payload message."""
        return self.raw.context_usage

    @property
    def estimated_prompt_tokens(self) -> int:
        """Prompt tokens estimated from the history (characters / 4)."""
        return self.raw.context_usage.estimated_prompt_tokens

    @property
    def reported_prompt_tokens(self) -> int:
        """Prompt tokens the model reported for the round; 0 if it did not."""
        return self.raw.context_usage.reported_prompt_tokens

    @property
    def context_window(self) -> int:
        """The agent's context window in tokens."""
        return self.raw.context_usage.context_window


@dataclass(frozen=True, slots=True)
class Compacted(EventBase):
    """The history was compacted. (`compacted`; payload `Compacted`)"""

    kind: Literal["compacted"] = field(default="compacted", init=False)
    __match_args__ = ("summary",)

    @property
    def data(self) -> event_pb2.Compacted:
        """The payload message."""
        return self.raw.compacted

    @property
    def summary(self) -> str:
        """The summary the history was replaced with."""
        return self.raw.compacted.summary


@dataclass(frozen=True, slots=True)
class RunResumed(EventBase):
    """The run was taken over and resumes. (`run_resumed`; payload `RunResumed`)"""

    kind: Literal["run_resumed"] = field(default="run_resumed", init=False)
    __match_args__ = ("attempt", "last_stored_sequence", "reason")

    @property
    def data(self) -> event_pb2.RunResumed:
        """The payload message."""
        return self.raw.run_resumed

    @property
    def attempt(self) -> int:
        """How many times the run was taken over, from 1."""
        return self.raw.run_resumed.attempt

    @property
    def last_stored_sequence(self) -> int:
        """The last event stored before the takeover."""
        return self.raw.run_resumed.last_stored_sequence

    @property
    def reason(self) -> str:
        """"lease_expired" (its replica died) or "handover" (it drained)."""
        return self.raw.run_resumed.reason


@dataclass(frozen=True, slots=True)
class RoundRetried(EventBase):
    """A model round is made again after its stream failed. (`round_retried`; payload
    `RoundRetried`)
    """

    kind: Literal["round_retried"] = field(default="round_retried", init=False)
    __match_args__ = ("attempt", "cause", "error", "model")

    @property
    def data(self) -> event_pb2.RoundRetried:
        """The payload message."""
        return self.raw.round_retried

    @property
    def attempt(self) -> int:
        """Retries of this round so far, from 1."""
        return self.raw.round_retried.attempt

    @property
    def cause(self) -> str:
        """What failed, in a word ("connection_reset", "idle_timeout", "server_error",
        "error_event", "invalid_structured_output", ...).
        """
        return self.raw.round_retried.cause

    @property
    def error(self) -> str:
        """The failure, as the provider reported it."""
        return self.raw.round_retried.error

    @property
    def model(self) -> str:
        """The model the retry uses (the agent's fallback model once the retries on its model
        ran out).
        """
        return self.raw.round_retried.model


#: Any event the SDK yields.
Event = RunStarted | TextStart | TextDelta | TextEnd | ThinkingStart | ThinkingDelta | ThinkingEnd | ToolCallsBegin | ToolCallsStart | ToolResult | ToolCallsComplete | UserSteered | Usage | Done | ApprovalRequired | QuestionAsked | DecisionApplied | Heartbeat | RunQueued | ContextUsage | Compacted | RunResumed | RoundRetried | UnknownEvent

#: The event class of each oneof member name.
EVENT_TYPES: dict[str, type[EventBase]] = {
    "run_started": RunStarted,
    "text_start": TextStart,
    "text_delta": TextDelta,
    "text_end": TextEnd,
    "thinking_start": ThinkingStart,
    "thinking_delta": ThinkingDelta,
    "thinking_end": ThinkingEnd,
    "tool_calls_begin": ToolCallsBegin,
    "tool_calls_start": ToolCallsStart,
    "tool_result": ToolResult,
    "tool_calls_complete": ToolCallsComplete,
    "user_steered": UserSteered,
    "usage": Usage,
    "done": Done,
    "approval_required": ApprovalRequired,
    "question_asked": QuestionAsked,
    "decision_applied": DecisionApplied,
    "heartbeat": Heartbeat,
    "run_queued": RunQueued,
    "context_usage": ContextUsage,
    "compacted": Compacted,
    "run_resumed": RunResumed,
    "round_retried": RoundRetried,
}


def event_from_proto(raw: event_pb2.AgentEvent) -> Event:
    """The typed event of a protobuf `AgentEvent` (`UnknownEvent` for a
    member this SDK does not know yet)."""
    kind = raw.WhichOneof("event")
    cls = EVENT_TYPES.get(kind or "")
    if cls is None:
        return UnknownEvent(raw.session_id, raw.run_id, raw.sequence, raw, kind or "")
    return cls(raw.session_id, raw.run_id, raw.sequence, raw)  # type: ignore[return-value]
