"""What every session store shares beyond the interface: the errors they
raise about runs (the session errors live in `pilothouse.errors`)."""

from __future__ import annotations

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    run_active,
)


def run_busy(session_id: str, run_id: str, *, lease_expired: bool) -> FailedPreconditionError:
    """RUN_ACTIVE from `begin_run`: `run_id` is the session's active run,
    with ErrorInfo metadata `lease_expired` "true" when its lease expired or
    was released (the run waits to be resumed by `claim_runs`)."""
    error = run_active(session_id, run_id)
    error.metadata["lease_expired"] = "true" if lease_expired else "false"
    return error


def run_exists(session_id: str, run_id: str, *, idempotency_key: str = "") -> AlreadyExistsError:
    """RUN_EXISTS: `run_id` (metadata `run_id`) already has that id, or that
    idempotency key on the session."""
    what = "idempotency key" if idempotency_key else "id"
    return AlreadyExistsError(
        f"session {session_id!r} already has a run with that {what}: {run_id}",
        reason="RUN_EXISTS",
        metadata={"session_id": session_id, "run_id": run_id},
    )


def run_not_found(session_id: str, run_id: str) -> NotFoundError:
    return NotFoundError(
        f"run {run_id!r} of session {session_id!r} not found",
        reason="RUN_NOT_FOUND",
        metadata={"session_id": session_id, "run_id": run_id},
    )
