"""The context variable that carries the authenticated `Principal` (see
`pilothouse.identity`) from the interceptor to the handlers."""

from __future__ import annotations

from contextvars import ContextVar

from pilothouse.identity import ADMIN, ANONYMOUS, USER, Principal

__all__ = ["ADMIN", "ANONYMOUS", "USER", "Principal", "current_principal", "reset_principal",
           "set_principal"]

_current: ContextVar[Principal | None] = ContextVar("pilothouse_principal", default=None)


def current_principal() -> Principal | None:
    """Inside a handler: the principal the call runs as (set by the
    authentication interceptor). None outside an authenticated call
    (e.g. in background tasks not started from one)."""
    return _current.get()


def set_principal(principal: Principal | None):
    """Set the current principal; returns the token to reset it with."""
    return _current.set(principal)


def reset_principal(token) -> None:
    _current.reset(token)
