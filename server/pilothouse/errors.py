"""Domain errors shared by the runtime and the reference ToolExecutor.

Each class stands for one gRPC status code; `pilothouse.rpc.errors` maps
them onto `google.rpc.Status` with an `ErrorInfo` (reason, domain,
metadata) and, for bad input, `BadRequest` field violations. This module
itself knows nothing of gRPC.
"""

from __future__ import annotations

#: Longest echo of a client's value (an id, a name) in an error, in UTF-8
#: bytes: every valid id fits; a longer value is cut, with its size noted.
MAX_ECHO_BYTES = 128
#: Longest error message, and field-violation description, in UTF-8 bytes.
MAX_MESSAGE_BYTES = 1024
MAX_DESCRIPTION_BYTES = 512


def clip(value: str, limit: int = MAX_ECHO_BYTES) -> str:
    """`value` as an error may echo it: unchanged up to `limit` bytes of
    UTF-8, else cut (at a character boundary) to about that, with "…" and
    its size in bytes. Errors travel in gRPC trailers, which clients cap
    (8 KiB by default; grpc-message percent-encodes non-ASCII, tripling
    it): an echo must never turn a NOT_FOUND into RESOURCE_EXHAUSTED."""
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return value
    cut = raw[:limit].decode("utf-8", "ignore")
    return f"{cut}…({len(raw)} bytes)"


class PilothouseError(Exception):
    """Base of the domain errors.

    `reason` is an UPPER_SNAKE_CASE machine-readable cause (ErrorInfo
    reason); `metadata` names the objects involved (ErrorInfo metadata);
    `field_violations` lists (field path, description) pairs for bad input.
    The message is cut at MAX_MESSAGE_BYTES, descriptions at
    MAX_DESCRIPTION_BYTES and metadata values at MAX_ECHO_BYTES (`clip`),
    whatever the raiser passed.
    """

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: clip(v) for k, v in (metadata or {}).items()}
        self.field_violations = [
            (f, clip(d, MAX_DESCRIPTION_BYTES)) for f, d in field_violations or []
        ]


class InvalidArgumentError(PilothouseError):
    """Bad input (INVALID_ARGUMENT)."""

    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(
        cls, field: str, description: str, *, reason: str | None = None, **metadata: str
    ) -> InvalidArgumentError:
        """An error about one request field; the reason names the field
        (`INVALID_<FIELD>`, from its last path component) unless given."""
        return cls(
            f"{field}: {description}",
            reason=reason or field_reason(field),
            field_violations=[(field, description)],
            metadata=metadata,
        )


def field_reason(field: str) -> str:
    """`INVALID_<FIELD>` for a field path: "options.timeout" -> INVALID_TIMEOUT,
    "decision.selected_options" -> INVALID_SELECTED_OPTIONS."""
    last = field.rsplit(".", 1)[-1].split("[", 1)[0]
    name = "".join(c if c.isalnum() else "_" for c in last).strip("_").upper()
    return f"INVALID_{name}" if name else "INVALID_ARGUMENT"


class NotFoundError(PilothouseError):
    """An unknown resource (NOT_FOUND)."""

    default_reason = "NOT_FOUND"


class AlreadyExistsError(PilothouseError):
    """A resource with that name exists (ALREADY_EXISTS)."""

    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(PilothouseError):
    """The resource is in the wrong state (FAILED_PRECONDITION)."""

    default_reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(PilothouseError):
    """A limit was reached (RESOURCE_EXHAUSTED)."""

    default_reason = "RESOURCE_EXHAUSTED"


class QuotaExceededError(ResourceExhaustedError):
    """A per-principal limit was reached (RESOURCE_EXHAUSTED, with
    `google.rpc.RetryInfo` and `google.rpc.QuotaFailure`).

    `retry_after_s` is how long, in seconds, until the call can succeed;
    `subject` names who is limited (e.g. "principal:alice") and `limit`
    which quota (e.g. "runs_per_minute"), as QuotaFailure's violation."""

    default_reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        subject: str,
        limit: str,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = max(0.0, retry_after_s)
        self.subject = subject
        self.limit = limit


class UnauthenticatedError(PilothouseError):
    """Missing or invalid credentials (UNAUTHENTICATED). The message says
    nothing about why a credential was refused."""

    default_reason = "UNAUTHENTICATED"


class PermissionDeniedError(PilothouseError):
    """An authenticated principal lacks the right (PERMISSION_DENIED)."""

    default_reason = "PERMISSION_DENIED"


class OutOfRangeError(PilothouseError):
    """A position past what is kept (OUT_OF_RANGE)."""

    default_reason = "OUT_OF_RANGE"


class UnavailableError(PilothouseError):
    """A dependency is down; retrying later may work (UNAVAILABLE)."""

    default_reason = "UNAVAILABLE"


class AbortedError(PilothouseError):
    """A concurrent change came first; read again and retry (ABORTED)."""

    default_reason = "ABORTED"


# --- The errors every layer raises about the same objects --------------------


def session_not_found(session_id: str) -> NotFoundError:
    return NotFoundError(
        f"session {clip(session_id)!r} not found",
        reason="SESSION_NOT_FOUND",
        metadata={"session_id": session_id},
    )


def agent_not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"agent {clip(name)!r} not found", reason="AGENT_NOT_FOUND", metadata={"agent": name}
    )


def agent_exists(name: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"agent {clip(name)!r} already exists", reason="AGENT_EXISTS", metadata={"agent": name}
    )


def agent_version_not_found(name: str, version: int) -> NotFoundError:
    return NotFoundError(
        f"agent {clip(name)!r} has no version {version}",
        reason="AGENT_VERSION_NOT_FOUND",
        metadata={"agent": name, "version": str(version)},
    )


def run_active(session_id: str, run_id: str, *, lease_expired: bool = False) -> FailedPreconditionError:
    """A second run on a busy session (ErrorInfo metadata `active_run_id`,
    and `lease_expired` "true" when the active run's process is gone and
    the run waits to be resumed)."""
    return FailedPreconditionError(
        f"session {clip(session_id)!r} already has an active run {clip(run_id)}",
        reason="RUN_ACTIVE",
        metadata={
            "session_id": session_id,
            "active_run_id": run_id,
            "lease_expired": "true" if lease_expired else "false",
        },
    )


def run_not_found(session_id: str, run_id: str) -> NotFoundError:
    return NotFoundError(
        f"run {run_id!r} of session {session_id!r} not found",
        reason="RUN_NOT_FOUND",
        metadata={"session_id": session_id, "run_id": run_id},
    )


def run_exists(session_id: str, run_id: str) -> AlreadyExistsError:
    """A run with this id, or this idempotency key on the session, exists
    (ErrorInfo metadata `run_id` names it)."""
    return AlreadyExistsError(
        f"session {session_id!r} already has run {run_id!r} with this id or idempotency key",
        reason="RUN_EXISTS",
        metadata={"session_id": session_id, "run_id": run_id},
    )


def no_active_run(session_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"session {clip(session_id)!r} has no active run",
        reason="NO_ACTIVE_RUN",
        metadata={"session_id": session_id},
    )


def session_closed(session_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"session {clip(session_id)!r} is closed",
        reason="SESSION_CLOSED",
        metadata={"session_id": session_id},
    )


def lease_lost(session_id: str, run_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"run {clip(run_id)} no longer holds session {clip(session_id)!r}",
        reason="LEASE_LOST",
        metadata={"session_id": session_id, "run_id": run_id},
    )
