"""Who is calling: the `Principal` an authenticated call runs as, and the
context variable that carries it to the handlers."""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

#: Agent CRUD and every session.
ADMIN = "admin"
#: Runs and the principal's own sessions.
USER = "user"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `id` is the stable identity (a token's principal, a JWT's `sub`, a
    certificate's SPIFFE id or DNS name, a mesh identity); `roles` what it
    may do (`admin`, `user`, or names a deployment defines); `source` how it
    was established (`none`, `tokens`, `jwt`, `mtls`, `mesh`);
    `forwarded_by` the replica's principal when another replica forwarded
    the call on its behalf ("" otherwise)."""

    id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    source: str = ""
    forwarded_by: str = ""

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def has_any(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)

    def with_roles(self, roles: Iterable[str]) -> Principal:
        return Principal(self.id, frozenset(roles), self.source, self.forwarded_by)


#: The caller when authentication is off (`PILOTHOUSE_AUTH=none`): an
#: admin, as on a developer's laptop.
ANONYMOUS = Principal("anonymous", frozenset({ADMIN, USER}), "none")

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
