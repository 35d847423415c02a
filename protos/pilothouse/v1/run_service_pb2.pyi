import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pilothouse.v1 import agent_pb2 as _agent_pb2
from pilothouse.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_QUEUED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_WAITING_FOR_DECISION: _ClassVar[RunStatus]
    RUN_STATUS_FINISHED: _ClassVar[RunStatus]
    RUN_STATUS_INTERRUPTED: _ClassVar[RunStatus]

class DisconnectPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_POLICY_UNSPECIFIED: _ClassVar[DisconnectPolicy]
    DISCONNECT_POLICY_CONTINUE: _ClassVar[DisconnectPolicy]
    DISCONNECT_POLICY_CANCEL: _ClassVar[DisconnectPolicy]

class ActiveRunPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVE_RUN_POLICY_UNSPECIFIED: _ClassVar[ActiveRunPolicy]
    ACTIVE_RUN_POLICY_REJECT: _ClassVar[ActiveRunPolicy]
    ACTIVE_RUN_POLICY_ENQUEUE: _ClassVar[ActiveRunPolicy]
    ACTIVE_RUN_POLICY_INTERRUPT: _ClassVar[ActiveRunPolicy]
    ACTIVE_RUN_POLICY_STEER: _ClassVar[ActiveRunPolicy]

class LateSteeringPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LATE_STEERING_POLICY_UNSPECIFIED: _ClassVar[LateSteeringPolicy]
    LATE_STEERING_POLICY_FOLLOW_UP: _ClassVar[LateSteeringPolicy]
    LATE_STEERING_POLICY_RETURN: _ClassVar[LateSteeringPolicy]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_QUEUED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_WAITING_FOR_DECISION: RunStatus
RUN_STATUS_FINISHED: RunStatus
RUN_STATUS_INTERRUPTED: RunStatus
DISCONNECT_POLICY_UNSPECIFIED: DisconnectPolicy
DISCONNECT_POLICY_CONTINUE: DisconnectPolicy
DISCONNECT_POLICY_CANCEL: DisconnectPolicy
ACTIVE_RUN_POLICY_UNSPECIFIED: ActiveRunPolicy
ACTIVE_RUN_POLICY_REJECT: ActiveRunPolicy
ACTIVE_RUN_POLICY_ENQUEUE: ActiveRunPolicy
ACTIVE_RUN_POLICY_INTERRUPT: ActiveRunPolicy
ACTIVE_RUN_POLICY_STEER: ActiveRunPolicy
LATE_STEERING_POLICY_UNSPECIFIED: LateSteeringPolicy
LATE_STEERING_POLICY_FOLLOW_UP: LateSteeringPolicy
LATE_STEERING_POLICY_RETURN: LateSteeringPolicy

class Run(_message.Message):
    __slots__ = ("run_id", "session_id", "agent", "agent_version", "status", "stop_reason", "error", "create_time", "start_time", "end_time", "usage", "iterations", "owner", "attempt", "idempotency_key", "last_sequence", "content", "sender")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    session_id: str
    agent: str
    agent_version: int
    status: RunStatus
    stop_reason: _event_pb2.StopReason
    error: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    usage: _event_pb2.Usage
    iterations: int
    owner: str
    attempt: int
    idempotency_key: str
    last_sequence: int
    content: str
    sender: str
    def __init__(self, run_id: _Optional[str] = ..., session_id: _Optional[str] = ..., agent: _Optional[str] = ..., agent_version: _Optional[int] = ..., status: _Optional[_Union[RunStatus, str]] = ..., stop_reason: _Optional[_Union[_event_pb2.StopReason, str]] = ..., error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage: _Optional[_Union[_event_pb2.Usage, _Mapping]] = ..., iterations: _Optional[int] = ..., owner: _Optional[str] = ..., attempt: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., last_sequence: _Optional[int] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class RunOptions(_message.Message):
    __slots__ = ("on_disconnect", "if_active", "late_steering", "timeout", "token_budget", "heartbeat_interval", "decision_timeout", "overrides")
    ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    IF_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LATE_STEERING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    DECISION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    on_disconnect: DisconnectPolicy
    if_active: ActiveRunPolicy
    late_steering: LateSteeringPolicy
    timeout: _duration_pb2.Duration
    token_budget: int
    heartbeat_interval: _duration_pb2.Duration
    decision_timeout: _duration_pb2.Duration
    overrides: _agent_pb2.ModelOverrides
    def __init__(self, on_disconnect: _Optional[_Union[DisconnectPolicy, str]] = ..., if_active: _Optional[_Union[ActiveRunPolicy, str]] = ..., late_steering: _Optional[_Union[LateSteeringPolicy, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., token_budget: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., decision_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., overrides: _Optional[_Union[_agent_pb2.ModelOverrides, _Mapping]] = ...) -> None: ...

class SendToRequest(_message.Message):
    __slots__ = ("session_id", "content", "sender", "options", "idempotency_key", "return_immediately")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RETURN_IMMEDIATELY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    options: RunOptions
    idempotency_key: str
    return_immediately: bool
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ..., options: _Optional[_Union[RunOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., return_immediately: _Optional[bool] = ...) -> None: ...

class SendToResponse(_message.Message):
    __slots__ = ("run_id", "response", "run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    response: _event_pb2.AgentResponse
    run: Run
    def __init__(self, run_id: _Optional[str] = ..., response: _Optional[_Union[_event_pb2.AgentResponse, _Mapping]] = ..., run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class StreamToRequest(_message.Message):
    __slots__ = ("session_id", "content", "sender", "options", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    options: RunOptions
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ..., options: _Optional[_Union[RunOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class StreamToResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ...) -> None: ...

class StartRun(_message.Message):
    __slots__ = ("session_id", "content", "sender", "options", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    options: RunOptions
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ..., options: _Optional[_Union[RunOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AttachRun(_message.Message):
    __slots__ = ("session_id", "run_id", "after_sequence", "heartbeat_interval")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    after_sequence: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CancelRun(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class SteerInput(_message.Message):
    __slots__ = ("content", "sender")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    content: str
    sender: str
    def __init__(self, content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class SteerRequest(_message.Message):
    __slots__ = ("start", "steer", "attach", "cancel", "decision")
    START_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    start: StartRun
    steer: SteerInput
    attach: AttachRun
    cancel: CancelRun
    decision: _event_pb2.Decision
    def __init__(self, start: _Optional[_Union[StartRun, _Mapping]] = ..., steer: _Optional[_Union[SteerInput, _Mapping]] = ..., attach: _Optional[_Union[AttachRun, _Mapping]] = ..., cancel: _Optional[_Union[CancelRun, _Mapping]] = ..., decision: _Optional[_Union[_event_pb2.Decision, _Mapping]] = ...) -> None: ...

class SteerResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("session_id", "run_id", "after_sequence", "heartbeat_interval")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    after_sequence: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ...) -> None: ...

class SteerSessionRequest(_message.Message):
    __slots__ = ("session_id", "content", "sender")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class SteerSessionResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("session_id", "run_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    run_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("run_id", "already_finished", "stop_reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FINISHED_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    already_finished: bool
    stop_reason: _event_pb2.StopReason
    def __init__(self, run_id: _Optional[str] = ..., already_finished: _Optional[bool] = ..., stop_reason: _Optional[_Union[_event_pb2.StopReason, str]] = ...) -> None: ...

class SubmitDecisionRequest(_message.Message):
    __slots__ = ("session_id", "decision")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    decision: _event_pb2.Decision
    def __init__(self, session_id: _Optional[str] = ..., decision: _Optional[_Union[_event_pb2.Decision, _Mapping]] = ...) -> None: ...

class SubmitDecisionResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "session_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    session_id: str
    def __init__(self, run_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("session_id", "statuses", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    statuses: _containers.RepeatedScalarFieldContainer[RunStatus]
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[RunStatus, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
