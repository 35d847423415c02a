"""Who is calling: the `Principal` a call runs as, shared by the
authentication layer (`pilothouse.auth`, which establishes it) and the
runtime (which decides what it may see)."""

from __future__ import annotations

from collections.abc import Iterable
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
