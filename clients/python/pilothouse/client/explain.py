"""Failed calls in words, for people at a terminal: what went wrong and
what to do about it."""

from __future__ import annotations

import grpc

from pilothouse.client.errors import PilothouseError


def _cause(message: str) -> str:
    lowered = message.lower()
    if "dns resolution failed" in lowered or "name resolution" in lowered:
        return "its name does not resolve"
    if "connection refused" in lowered or "failed to connect" in lowered:
        return "nothing accepts connections there"
    if "socket closed" in lowered or "connection reset" in lowered:
        return "the connection was closed"
    return message or "no answer"


def explain(error: PilothouseError, target: str, timeout: float | None = None) -> str:
    """A message for `error` from a call to `target`: unreachable servers,
    credentials and deadlines in words with the next step; any other error
    as `CODE: message (REASON)` with its field violations."""
    code = error.code
    if code is grpc.StatusCode.UNAVAILABLE and error.reason == "DRAINING":
        return (f"The Pilothouse runtime at {target} is shutting down and takes no new work.\n"
                "Retry in a moment: another replica, or the restarted one, will answer.")
    if code is grpc.StatusCode.UNAVAILABLE:
        return (f"Cannot reach the Pilothouse runtime at {target}: {_cause(error.message)}.\n"
                "Is it running? Start it with `make run` (or `pilothouse-server`), or point "
                "the CLI at it with --server HOST:PORT (or PILOTHOUSE_SERVER).")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return (f"The Pilothouse runtime at {target} did not accept this client's credentials"
                f"{': ' + error.message if error.message else ''}.\n"
                "Check the token or client certificate you pass, and that it has not expired.")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return (f"The Pilothouse runtime at {target} refused this call"
                f"{': ' + error.message if error.message else ''}.\n"
                "Your credentials are valid but do not allow it; ask for the permission.")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g} s" if timeout else " in time"
        return (f"The Pilothouse runtime at {target} did not answer{within}.\n"
                "It may be overloaded, or something between here and there holds the "
                "connection; retry, or allow longer with --rpc-timeout SECONDS.")
    text = f"{code.name}: {error.message}"
    if error.reason and error.reason != code.name:
        text += f" ({error.reason})"
    for violation in error.field_violations:
        text += f"\n  {violation.field}: {violation.description}"
    return text
