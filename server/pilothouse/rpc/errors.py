"""Translate domain errors into gRPC statuses with rich details.

Every handler is wrapped by `handle_errors`: a `PilothouseError` becomes its
status code with `google.rpc.ErrorInfo` (and `BadRequest` field violations);
the error of an upstream gRPC call the handler made passes through with its
own status; any other exception is logged and becomes INTERNAL with a
generic message, so no Python text reaches a client as UNKNOWN.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pilothouse.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    PilothouseError,
    QuotaExceededError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "pilothouse.v1"
T = TypeVar("T")

_CODES: dict[type[PilothouseError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    AbortedError: grpc.StatusCode.ABORTED,
}


def status_code_of(error: PilothouseError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    field_violations: list[tuple[str, str]] | None = None,
    *,
    retry_after_s: float | None = None,
    quota_violations: list[tuple[str, str]] | None = None,
) -> grpc.Status:
    """A `grpc.Status` carrying `google.rpc.Status` details: ErrorInfo
    always; BadRequest for `field_violations` (field, description);
    RetryInfo for `retry_after_s` (seconds); QuotaFailure for
    `quota_violations` (subject, description)."""
    messages: list[Any] = [
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    ]
    if field_violations:
        messages.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in field_violations
                ]
            )
        )
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(retry_after_s, 0.0) * 1e9))
        messages.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if quota_violations:
        messages.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in quota_violations
                ]
            )
        )
    details = []
    for detail in messages:
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(proto)


def status_of(error: PilothouseError) -> grpc.Status:
    if isinstance(error, QuotaExceededError):
        return rich_status(
            status_code_of(error), error.message, error.reason, error.metadata,
            retry_after_s=error.retry_after_s,
            quota_violations=[(error.subject, error.limit)],
        )
    return rich_status(
        status_code_of(error), error.message, error.reason, error.metadata, error.field_violations
    )


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, PilothouseError):
        await context.abort_with_status(status_of(exc))
    if isinstance(exc, grpc.aio.AioRpcError):
        # A call this handler made upstream (a forwarded call) failed: its
        # status, details and rich-status trailers pass through unchanged.
        # (grpc.aio gives trailers as a Metadata object; abort wants a tuple.)
        await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))
    log.exception("unhandled error in handler", exc_info=exc)
    await context.abort_with_status(
        rich_status(grpc.StatusCode.INTERNAL, "internal error; see the server log", "INTERNAL")
    )


def handle_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a grpc.aio handler (coroutine or async generator) so domain
    errors become rich statuses and anything else INTERNAL."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> Any:
            inner = method(self, request, context)
            try:
                async for item in inner:
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # translated, never leaked
                await _abort(context, exc)
            finally:
                # At once, so the handler's own `finally` (a disconnect
                # policy, a subscription) does not wait for the collector.
                await inner.aclose()

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return unary_wrapper


def error_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[
    error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None
]:
    """Client side: the ErrorInfo and BadRequest of a failed call, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info = bad = None
    if status is None:
        return None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


def status_detail(error: grpc.aio.AioRpcError | grpc.RpcError, message_type: type[T]) -> T | None:
    """Client side: the first `google.rpc.Status` detail of `message_type`
    (e.g. `error_details_pb2.RetryInfo`, `QuotaFailure`) of a failed call,
    or None."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):  # type: ignore[attr-defined]
            found = message_type()
            detail.Unpack(found)  # type: ignore[arg-type]
            return found
    return None
