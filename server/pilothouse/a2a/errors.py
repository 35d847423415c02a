"""Pilothouse's domain errors as A2A errors.

The a2a-sdk's transports turn its own `A2AError` classes (and only those,
by exact type) into JSON-RPC error codes and gRPC statuses with a
`google.rpc.ErrorInfo` of domain `a2a-protocol.org`. Each Pilothouse
error becomes the A2A error of the same meaning, and its reason and
metadata travel in the error's `data` (JSON-RPC `error.data`, ErrorInfo
metadata): `pilothouseReason` (e.g. `SESSION_CLOSED`), `pilothouseCode`
(the gRPC code name) and the error's own metadata.

A2A has no error for "try again" (UNAVAILABLE: a draining server, a run
waiting to be taken over), for limits (RESOURCE_EXHAUSTED) or for
refusals (PERMISSION_DENIED): over JSON-RPC they are InternalError
(-32603) with `pilothouseCode` saying which, over gRPC (`GrpcA2AHandler`)
the Pilothouse status itself, with its ErrorInfo (domain `pilothouse.v1`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.utils import errors as a2a_errors
from a2a.utils.errors import A2AError

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PilothouseError,
)
from pilothouse.rpc.errors import status_code_of

log = logging.getLogger(__name__)

_MAPPED: tuple[tuple[type[PilothouseError], type[A2AError]], ...] = (
    (InvalidArgumentError, a2a_errors.InvalidParamsError),
    (OutOfRangeError, a2a_errors.InvalidParamsError),
    (NotFoundError, a2a_errors.TaskNotFoundError),
    (FailedPreconditionError, a2a_errors.UnsupportedOperationError),
    (AlreadyExistsError, a2a_errors.UnsupportedOperationError),
)


def to_a2a(error: PilothouseError, *, not_found: type[A2AError] | None = None) -> A2AError:
    """The A2A error for `error` (its `__cause__` is `error`). `not_found`
    replaces TaskNotFoundError for a NOT_FOUND that is not about a task
    (an unknown agent or context is InvalidParamsError)."""
    cls: type[A2AError] = a2a_errors.InternalError
    for pilothouse_cls, a2a_cls in _MAPPED:
        if isinstance(error, pilothouse_cls):
            cls = a2a_cls
            break
    if cls is a2a_errors.TaskNotFoundError and not_found is not None:
        cls = not_found
    data: dict[str, object] = {
        "pilothouseReason": error.reason,
        "pilothouseCode": status_code_of(error).name,
        **error.metadata,
    }
    if error.field_violations:
        data["errors"] = [{"field": f, "message": m} for f, m in error.field_violations]
    translated = cls(error.message, data=data)
    translated.__cause__ = error
    return translated


def invalid_params(message: str, field: str = "", **metadata: str) -> A2AError:
    """An InvalidParamsError about one request field (camelCase, as A2A
    spells it)."""
    data: dict[str, object] = {"pilothouseReason": "INVALID_ARGUMENT", **metadata}
    if field:
        data["errors"] = [{"field": field, "message": message}]
    return a2a_errors.InvalidParamsError(f"{field}: {message}" if field else message, data=data)


def pilothouse_cause(error: BaseException) -> PilothouseError | None:
    """The Pilothouse error an A2A error was made from, if any."""
    cause = error.__cause__
    return cause if isinstance(cause, PilothouseError) else None


def translated(method: Callable[..., Any]) -> Callable[..., Any]:
    """Let only A2AErrors out of a handler method (a coroutine or an
    async generator): Pilothouse errors are translated, anything else is
    logged and becomes InternalError."""

    def translate(exc: Exception) -> A2AError:
        if isinstance(exc, PilothouseError):
            return to_a2a(exc)
        log.exception("unhandled error in the A2A handler", exc_info=exc)
        return a2a_errors.InternalError("internal error; see the server log")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, params: Any, context: ServerCallContext) -> Any:
            try:
                async with contextlib.aclosing(method(self, params, context)) as items:
                    async for item in items:
                        yield item
            except A2AError:
                raise
            except Exception as exc:
                raise translate(exc) from exc

        return stream

    @functools.wraps(method)
    async def unary(self: Any, params: Any, context: ServerCallContext) -> Any:
        try:
            return await method(self, params, context)
        except A2AError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    return unary
