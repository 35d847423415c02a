import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pilothouse.v1 import message_pb2 as _message_pb2
from pilothouse.v1 import tool_pb2 as _tool_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_TEXT_RESPONSE: _ClassVar[StopReason]
    STOP_REASON_MAX_ITERATIONS: _ClassVar[StopReason]
    STOP_REASON_NO_ACTION: _ClassVar[StopReason]
    STOP_REASON_ERROR: _ClassVar[StopReason]
    STOP_REASON_CANCELLED: _ClassVar[StopReason]
    STOP_REASON_TIMEOUT: _ClassVar[StopReason]
    STOP_REASON_BUDGET_EXCEEDED: _ClassVar[StopReason]
    STOP_REASON_INTERRUPTED: _ClassVar[StopReason]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_APPROVE: _ClassVar[Verdict]
    VERDICT_DENY: _ClassVar[Verdict]
    VERDICT_APPROVE_ALWAYS: _ClassVar[Verdict]
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_TEXT_RESPONSE: StopReason
STOP_REASON_MAX_ITERATIONS: StopReason
STOP_REASON_NO_ACTION: StopReason
STOP_REASON_ERROR: StopReason
STOP_REASON_CANCELLED: StopReason
STOP_REASON_TIMEOUT: StopReason
STOP_REASON_BUDGET_EXCEEDED: StopReason
STOP_REASON_INTERRUPTED: StopReason
VERDICT_UNSPECIFIED: Verdict
VERDICT_APPROVE: Verdict
VERDICT_DENY: Verdict
VERDICT_APPROVE_ALWAYS: Verdict

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "cache_write_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "name", "output", "error", "duration_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    output: str
    error: str
    duration_ms: int
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., output: _Optional[str] = ..., error: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class AgentStep(_message.Message):
    __slots__ = ("message", "usage", "finish_reason", "tool_calls", "tool_results")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    usage: Usage
    finish_reason: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[_tool_pb2.ToolCall]
    tool_results: _containers.RepeatedCompositeFieldContainer[ToolResult]
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[_tool_pb2.ToolCall, _Mapping]]] = ..., tool_results: _Optional[_Iterable[_Union[ToolResult, _Mapping]]] = ...) -> None: ...

class AgentResponse(_message.Message):
    __slots__ = ("final_response", "iterations", "stop_reason", "error", "steps", "model", "usage", "unapplied_steering")
    FINAL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    UNAPPLIED_STEERING_FIELD_NUMBER: _ClassVar[int]
    final_response: str
    iterations: int
    stop_reason: StopReason
    error: str
    steps: _containers.RepeatedCompositeFieldContainer[AgentStep]
    model: str
    usage: Usage
    unapplied_steering: _containers.RepeatedCompositeFieldContainer[UserSteered]
    def __init__(self, final_response: _Optional[str] = ..., iterations: _Optional[int] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., error: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[AgentStep, _Mapping]]] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., unapplied_steering: _Optional[_Iterable[_Union[UserSteered, _Mapping]]] = ...) -> None: ...

class RunStarted(_message.Message):
    __slots__ = ("agent", "model", "content", "sender")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    agent: str
    model: str
    content: str
    sender: str
    def __init__(self, agent: _Optional[str] = ..., model: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class TextStart(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class TextEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ThinkingStart(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ThinkingDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ThinkingEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToolCallsBegin(_message.Message):
    __slots__ = ("tool_calls",)
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    tool_calls: _containers.RepeatedCompositeFieldContainer[_tool_pb2.ToolCall]
    def __init__(self, tool_calls: _Optional[_Iterable[_Union[_tool_pb2.ToolCall, _Mapping]]] = ...) -> None: ...

class ToolCallsStart(_message.Message):
    __slots__ = ("tool_calls",)
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    tool_calls: _containers.RepeatedCompositeFieldContainer[_tool_pb2.ToolCall]
    def __init__(self, tool_calls: _Optional[_Iterable[_Union[_tool_pb2.ToolCall, _Mapping]]] = ...) -> None: ...

class ToolCallsComplete(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UserSteered(_message.Message):
    __slots__ = ("content", "sender")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    content: str
    sender: str
    def __init__(self, content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class UsageReported(_message.Message):
    __slots__ = ("iteration", "usage")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    usage: Usage
    def __init__(self, iteration: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ApprovalRequired(_message.Message):
    __slots__ = ("request_id", "tool_call", "reason", "expire_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tool_call: _tool_pb2.ToolCall
    reason: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., tool_call: _Optional[_Union[_tool_pb2.ToolCall, _Mapping]] = ..., reason: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QuestionAsked(_message.Message):
    __slots__ = ("request_id", "question", "options", "multi_select", "expire_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MULTI_SELECT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    question: str
    options: _containers.RepeatedScalarFieldContainer[str]
    multi_select: bool
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., question: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., multi_select: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DecisionApplied(_message.Message):
    __slots__ = ("request_id", "decision")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: Decision
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("request_id", "verdict", "reason", "selected_options", "text", "edited_arguments_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SELECTED_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EDITED_ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    verdict: Verdict
    reason: str
    selected_options: _containers.RepeatedScalarFieldContainer[str]
    text: str
    edited_arguments_json: str
    def __init__(self, request_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reason: _Optional[str] = ..., selected_options: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., edited_arguments_json: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunQueued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class ContextUsage(_message.Message):
    __slots__ = ("estimated_prompt_tokens", "reported_prompt_tokens", "context_window")
    ESTIMATED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    estimated_prompt_tokens: int
    reported_prompt_tokens: int
    context_window: int
    def __init__(self, estimated_prompt_tokens: _Optional[int] = ..., reported_prompt_tokens: _Optional[int] = ..., context_window: _Optional[int] = ...) -> None: ...

class Compacted(_message.Message):
    __slots__ = ("summary",)
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    summary: str
    def __init__(self, summary: _Optional[str] = ...) -> None: ...

class RunResumed(_message.Message):
    __slots__ = ("attempt", "last_stored_sequence", "reason")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LAST_STORED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    last_stored_sequence: int
    reason: str
    def __init__(self, attempt: _Optional[int] = ..., last_stored_sequence: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundRetried(_message.Message):
    __slots__ = ("attempt", "cause", "error", "model")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    cause: str
    error: str
    model: str
    def __init__(self, attempt: _Optional[int] = ..., cause: _Optional[str] = ..., error: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("session_id", "run_id", "sequence", "time", "run_started", "text_start", "text_delta", "text_end", "thinking_start", "thinking_delta", "thinking_end", "tool_calls_begin", "tool_calls_start", "tool_result", "tool_calls_complete", "user_steered", "usage", "done", "approval_required", "question_asked", "decision_applied", "heartbeat", "run_queued", "context_usage", "compacted", "run_resumed", "round_retried")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_START_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TEXT_END_FIELD_NUMBER: _ClassVar[int]
    THINKING_START_FIELD_NUMBER: _ClassVar[int]
    THINKING_DELTA_FIELD_NUMBER: _ClassVar[int]
    THINKING_END_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_BEGIN_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_START_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    USER_STEERED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    QUESTION_ASKED_FIELD_NUMBER: _ClassVar[int]
    DECISION_APPLIED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RUN_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_USAGE_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_FIELD_NUMBER: _ClassVar[int]
    RUN_RESUMED_FIELD_NUMBER: _ClassVar[int]
    ROUND_RETRIED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    run_started: RunStarted
    text_start: TextStart
    text_delta: TextDelta
    text_end: TextEnd
    thinking_start: ThinkingStart
    thinking_delta: ThinkingDelta
    thinking_end: ThinkingEnd
    tool_calls_begin: ToolCallsBegin
    tool_calls_start: ToolCallsStart
    tool_result: ToolResult
    tool_calls_complete: ToolCallsComplete
    user_steered: UserSteered
    usage: UsageReported
    done: AgentResponse
    approval_required: ApprovalRequired
    question_asked: QuestionAsked
    decision_applied: DecisionApplied
    heartbeat: Heartbeat
    run_queued: RunQueued
    context_usage: ContextUsage
    compacted: Compacted
    run_resumed: RunResumed
    round_retried: RoundRetried
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_started: _Optional[_Union[RunStarted, _Mapping]] = ..., text_start: _Optional[_Union[TextStart, _Mapping]] = ..., text_delta: _Optional[_Union[TextDelta, _Mapping]] = ..., text_end: _Optional[_Union[TextEnd, _Mapping]] = ..., thinking_start: _Optional[_Union[ThinkingStart, _Mapping]] = ..., thinking_delta: _Optional[_Union[ThinkingDelta, _Mapping]] = ..., thinking_end: _Optional[_Union[ThinkingEnd, _Mapping]] = ..., tool_calls_begin: _Optional[_Union[ToolCallsBegin, _Mapping]] = ..., tool_calls_start: _Optional[_Union[ToolCallsStart, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., tool_calls_complete: _Optional[_Union[ToolCallsComplete, _Mapping]] = ..., user_steered: _Optional[_Union[UserSteered, _Mapping]] = ..., usage: _Optional[_Union[UsageReported, _Mapping]] = ..., done: _Optional[_Union[AgentResponse, _Mapping]] = ..., approval_required: _Optional[_Union[ApprovalRequired, _Mapping]] = ..., question_asked: _Optional[_Union[QuestionAsked, _Mapping]] = ..., decision_applied: _Optional[_Union[DecisionApplied, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., run_queued: _Optional[_Union[RunQueued, _Mapping]] = ..., context_usage: _Optional[_Union[ContextUsage, _Mapping]] = ..., compacted: _Optional[_Union[Compacted, _Mapping]] = ..., run_resumed: _Optional[_Union[RunResumed, _Mapping]] = ..., round_retried: _Optional[_Union[RoundRetried, _Mapping]] = ...) -> None: ...
