import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pilothouse.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_OPEN: _ClassVar[SessionState]
    SESSION_STATE_CLOSED: _ClassVar[SessionState]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_OPEN: SessionState
SESSION_STATE_CLOSED: SessionState

class Session(_message.Message):
    __slots__ = ("id", "agent", "created_by", "title", "state", "create_time", "update_time", "message_count", "uptime", "active_run_id", "always_approved_tools", "last_run_id", "last_run_stop_reason", "last_run_usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ALWAYS_APPROVED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    created_by: str
    title: str
    state: SessionState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    message_count: int
    uptime: _duration_pb2.Duration
    active_run_id: str
    always_approved_tools: _containers.RepeatedScalarFieldContainer[str]
    last_run_id: str
    last_run_stop_reason: _event_pb2.StopReason
    last_run_usage: _event_pb2.Usage
    def __init__(self, id: _Optional[str] = ..., agent: _Optional[str] = ..., created_by: _Optional[str] = ..., title: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message_count: _Optional[int] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., active_run_id: _Optional[str] = ..., always_approved_tools: _Optional[_Iterable[str]] = ..., last_run_id: _Optional[str] = ..., last_run_stop_reason: _Optional[_Union[_event_pb2.StopReason, str]] = ..., last_run_usage: _Optional[_Union[_event_pb2.Usage, _Mapping]] = ...) -> None: ...
