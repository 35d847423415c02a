"""Pilothouse's Python SDK: an async client of the runtime's gRPC API with
typed run events, run handles that survive cut streams, and one exception
class per status code.

    from pilothouse.client import PilothouseClient
    from pilothouse.client.events import Done, TextDelta, ToolResult

    async with PilothouseClient("127.0.0.1:50051") as client:
        session = await client.get_or_create_session("assistant", created_by="me")
        run = await client.start_run(session.id, "What time is it in Tokyo?")
        async for event in run.events():
            match event:
                case TextDelta(text=text):
                    print(text, end="")
                case ToolResult(name=name, output=output):
                    print(f"[{name}: {output}]")
        done = await run.result()   # Done: final_response, stop_reason, usage

The protobuf messages and gRPC stubs are `pilothouse.v1.*_pb2`; every
typed event keeps its protobuf as `.raw`.
"""

from pilothouse.client.client import PilothouseClient, SteerStream
from pilothouse.client.connection import CHANNEL_OPTIONS, open_channel
from pilothouse.client.errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    PilothouseError,
    PilothouseRpcError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    error_from_rpc,
)
from pilothouse.client.events import Event, event_from_proto
from pilothouse.client.run import RunHandle, decision, is_stream_cut

__all__ = [
    "CHANNEL_OPTIONS",
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "Event",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PilothouseClient",
    "PilothouseError",
    "PilothouseRpcError",
    "ResourceExhaustedError",
    "RunHandle",
    "SteerStream",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "decision",
    "error_from_rpc",
    "event_from_proto",
    "is_stream_cut",
    "open_channel",
]
