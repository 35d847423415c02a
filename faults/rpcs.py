"""Every RPC of both servers, called generically from its descriptor: with a
message or with raw bytes, unary or streaming, always with a deadline.

`Method` wraps one method descriptor; `invoke` sends one request (a message,
or `bytes` sent as they are) and reads up to `max_events` responses, so a
stream that starts a run is followed to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from pilothouse.v1 import (
    agent_service_pb2,
    run_service_pb2,
    session_service_pb2,
    tool_executor_service_pb2,
)

RUNTIME_SERVICES = [
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
]
TOOLS_SERVICES = [tool_executor_service_pb2.DESCRIPTOR.services_by_name["ToolExecutorService"]]


@dataclass(frozen=True)
class Method:
    descriptor: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def name(self) -> str:
        return f"{self.descriptor.containing_service.name}.{self.descriptor.name}"

    @property
    def input(self) -> Descriptor:
        return self.descriptor.input_type

    def new_request(self) -> Message:
        return GetMessageClass(self.input)()

    @property
    def client_streaming(self) -> bool:
        return self.descriptor.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.descriptor.server_streaming


def methods(services) -> list[Method]:
    return [Method(m) for s in services for m in s.methods]


@dataclass
class Outcome:
    """How one call ended: `error` None is OK; `hung` when the deadline of
    the suite (not the server) ran out; `responses` the decoded replies."""

    error: grpc.aio.AioRpcError | None = None
    hung: bool = False
    responses: list[Message] | None = None


def _serializer(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


async def invoke(
    channel: grpc.aio.Channel, method: Method, request: Message | bytes, *,
    timeout: float = 20.0, max_events: int = 10_000,
) -> Outcome:
    """Send `request` and read the reply (or up to `max_events` replies)."""
    response_class = GetMessageClass(method.descriptor.output_type)
    kwargs = {"request_serializer": _serializer, "response_deserializer": response_class.FromString}
    outcome = Outcome(responses=[])
    if method.client_streaming:
        async def requests():
            yield request

        argument = requests()
        factory = channel.stream_stream if method.server_streaming else channel.stream_unary
    else:
        argument = request
        factory = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = factory(method.path, **kwargs)(argument, timeout=timeout + 10)
    try:
        async with asyncio.timeout(timeout):
            if method.server_streaming:
                async for response in call:
                    outcome.responses.append(response)
                    if len(outcome.responses) >= max_events:
                        call.cancel()
                        break
            else:
                outcome.responses.append(await call)
    except TimeoutError:
        outcome.hung = True
        call.cancel()
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED or len(outcome.responses) < max_events:
            outcome.error = exc
    return outcome


def field_paths(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every scalar field reachable from `descriptor` (messages of this
    package and the well-known Duration), as ("a.b.c", field)."""
    for f in descriptor.fields:
        path = f"{prefix}{f.name}"
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry or f.is_repeated or depth > 3:
                continue
            yield from field_paths(f.message_type, path + ".", depth + 1)
        else:
            yield path, f


def set_path(message: Message, path: str, value) -> None:
    """Set the field at `path` ("a.b.c") of `message` to `value` (a list for
    repeated fields)."""
    *parents, leaf = path.split(".")
    target = message
    for name in parents:
        target = getattr(target, name)
    field = target.DESCRIPTOR.fields_by_name[leaf]
    if field.is_repeated:
        del getattr(target, leaf)[:]
        getattr(target, leaf).extend(value if isinstance(value, list) else [value])
    else:
        setattr(target, leaf, value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def bytes_in_first_string(descriptor: Descriptor, payload: bytes, depth: int = 0) -> bytes | None:
    """Wire bytes that put `payload` into the first string field reachable
    from `descriptor` (through sub-messages), or None if there is none."""
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            return length_delimited(f.number, payload)
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            inner = bytes_in_first_string(f.message_type, payload, depth + 1)
            if inner is not None:
                return length_delimited(f.number, inner)
    return None
