from pilothouse.v1 import event_pb2 as _event_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendToRequest(_message.Message):
    __slots__ = ("session_id", "content", "sender")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class SendToResponse(_message.Message):
    __slots__ = ("run_id", "response")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    response: _event_pb2.AgentResponse
    def __init__(self, run_id: _Optional[str] = ..., response: _Optional[_Union[_event_pb2.AgentResponse, _Mapping]] = ...) -> None: ...

class StreamToRequest(_message.Message):
    __slots__ = ("session_id", "content", "sender")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class StreamToResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ...) -> None: ...

class StartRun(_message.Message):
    __slots__ = ("session_id", "content", "sender")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sender: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class SteerInput(_message.Message):
    __slots__ = ("content", "sender")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    content: str
    sender: str
    def __init__(self, content: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class SteerRequest(_message.Message):
    __slots__ = ("start", "steer")
    START_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    start: StartRun
    steer: SteerInput
    def __init__(self, start: _Optional[_Union[StartRun, _Mapping]] = ..., steer: _Optional[_Union[SteerInput, _Mapping]] = ...) -> None: ...

class SteerResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ...) -> None: ...
