from pilothouse.v1 import tool_pb2 as _tool_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[_tool_pb2.Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[_tool_pb2.Tool, _Mapping]]] = ...) -> None: ...

class ExecuteToolRequest(_message.Message):
    __slots__ = ("call_id", "name", "arguments_json", "agent", "sender", "session_id", "run_id", "answer", "principal", "principal_roles")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_ROLES_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    arguments_json: str
    agent: str
    sender: str
    session_id: str
    run_id: str
    answer: _tool_pb2.Answer
    principal: str
    principal_roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., agent: _Optional[str] = ..., sender: _Optional[str] = ..., session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., answer: _Optional[_Union[_tool_pb2.Answer, _Mapping]] = ..., principal: _Optional[str] = ..., principal_roles: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecuteToolResponse(_message.Message):
    __slots__ = ("output", "error", "question")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    output: str
    error: str
    question: _tool_pb2.Question
    def __init__(self, output: _Optional[str] = ..., error: _Optional[str] = ..., question: _Optional[_Union[_tool_pb2.Question, _Mapping]] = ...) -> None: ...
