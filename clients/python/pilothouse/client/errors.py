"""SDK exceptions: one class per gRPC status code under `PilothouseError`,
each carrying the server's rich error details (`google.rpc.Status` in the
`grpc-status-details-bin` trailer, decoded with grpcio-status).

    try:
        await client.get_agent("nope")
    except NotFoundError as error:
        error.reason      # "AGENT_NOT_FOUND" (ErrorInfo.reason)
        error.metadata    # {"agent": "nope"} (ErrorInfo.metadata)

`error_from_rpc` turns any `grpc.RpcError` into the class of its code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import NamedTuple, ParamSpec, TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PilothouseError",
    "PilothouseRpcError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_from_rpc",
    "translating",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def translating(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """`method` raising the `PilothouseError` of its code for a failed
    call instead of `grpc.aio.AioRpcError`."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    return wrapper


class FieldViolation(NamedTuple):
    """One `google.rpc.BadRequest.FieldViolation`: the request field (a
    path such as `config.name`) and what is wrong with it."""

    field: str
    description: str


class PilothouseError(Exception):
    """A failed call to Pilothouse.

    Attributes:
        code: the `grpc.StatusCode`.
        message: the status message.
        reason: `ErrorInfo.reason` (e.g. `SESSION_NOT_FOUND`), "" without one.
        domain: `ErrorInfo.domain` (`pilothouse.v1` for the runtime's own).
        metadata: `ErrorInfo.metadata`, naming the objects involved.
        field_violations: `BadRequest` field violations, in order.
        retry_delay: `RetryInfo.retry_delay` in seconds, None without one.

    `PilothouseError(rpc_error)` reads all of that from a failed call;
    `error_from_rpc(rpc_error)` does the same and picks the subclass of the
    status code (`NotFoundError`, ...), as every SDK method does.
    """

    #: The status code a subclass stands for (UNKNOWN for the base).
    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, error: grpc.RpcError | None = None, *, code: grpc.StatusCode | None = None,
                 message: str = "") -> None:
        self.code: grpc.StatusCode = code or self.status_code
        self.message: str = message
        self.reason: str = ""
        self.domain: str = ""
        self.metadata: dict[str, str] = {}
        self.field_violations: list[FieldViolation] = []
        self.retry_delay: float | None = None
        if error is not None:
            self._read(error)
        super().__init__(f"{self.code.name}: {self.message}")

    def _read(self, error: grpc.RpcError) -> None:
        if not isinstance(error, grpc.aio.AioRpcError | grpc.Call):
            return
        self.code = error.code()
        self.message = error.details() or ""
        try:
            # grpc.aio's error has the Call methods from_call reads
            # (code, details, trailing_metadata) without being a grpc.Call.
            status = rpc_status.from_call(cast("grpc.Call", error))
        except ValueError:  # details that contradict the status line
            status = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason, self.domain = info.reason, info.domain
                self.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations = [
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()


#: The name this exception had before the per-code classes.
PilothouseRpcError = PilothouseError


class CancelledError(PilothouseError):
    """CANCELLED: the call was cancelled (usually by the caller)."""

    status_code = grpc.StatusCode.CANCELLED


class UnknownError(PilothouseError):
    """UNKNOWN: an error without a status (never sent by the runtime on purpose)."""

    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(PilothouseError):
    """INVALID_ARGUMENT: bad input; see `field_violations`."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(PilothouseError):
    """DEADLINE_EXCEEDED: the call's deadline passed before it finished."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(PilothouseError):
    """NOT_FOUND: an unknown agent, session, run or decision request."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(PilothouseError):
    """ALREADY_EXISTS: e.g. an agent of that name."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(PilothouseError):
    """PERMISSION_DENIED: the caller may not do this."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(PilothouseError):
    """RESOURCE_EXHAUSTED: a limit was hit (message size, quota); see `retry_delay`."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(PilothouseError):
    """FAILED_PRECONDITION: wrong state, e.g. a run already active on the
    session (`metadata["active_run_id"]`) or a closed session."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(PilothouseError):
    """ABORTED: a concurrency conflict; retry the whole operation."""

    status_code = grpc.StatusCode.ABORTED


class OutOfRangeError(PilothouseError):
    """OUT_OF_RANGE: e.g. events no longer kept
    (`metadata["oldest_available_sequence"]`)."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(PilothouseError):
    """UNIMPLEMENTED: the server does not offer this method."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(PilothouseError):
    """INTERNAL: a server bug, or a stream reset by a proxy (RST_STREAM)."""

    status_code = grpc.StatusCode.INTERNAL


class UnavailableError(PilothouseError):
    """UNAVAILABLE: the server cannot be reached or is draining; retryable."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DataLossError(PilothouseError):
    """DATA_LOSS: unrecoverable data loss."""

    status_code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(PilothouseError):
    """UNAUTHENTICATED: missing or invalid credentials."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[PilothouseError]] = {
    cls.status_code: cls for cls in PilothouseError.__subclasses__()
}


def error_from_rpc(error: grpc.RpcError) -> PilothouseError:
    """The SDK exception for a failed call: the subclass of its status code
    with its ErrorInfo, BadRequest and RetryInfo details."""
    if isinstance(error, grpc.aio.AioRpcError | grpc.Call):
        return _BY_CODE.get(error.code(), PilothouseError)(error)
    return PilothouseError(error)
