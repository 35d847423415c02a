"""What a call presents (metadata, the TLS peer) and the interface every
way of checking it implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pilothouse.auth.principal import Principal

#: The metadata key credentials travel in (HTTP's Authorization header).
AUTHORIZATION = "authorization"


class CredentialRejected(Exception):
    """A credential of an authenticator's kind was presented and failed.
    The message is for the audit log only; the caller learns nothing of it."""


@dataclass(frozen=True, slots=True)
class CallCredentials:
    """One call's credentials: its metadata (keys lower case, the first
    value of each), the transport's auth context (grpc's peer properties:
    `transport_security_type`, `peer_uri`, `peer_dns`, `x509_pem_cert`...)
    and the peer address ("ipv4:127.0.0.1:5000")."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    auth_context: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    peer: str = ""

    @classmethod
    def of(cls, context) -> CallCredentials:
        """From a grpc.aio ServicerContext (metadata and TLS peer)."""
        metadata = cls.from_metadata(context.invocation_metadata()).metadata
        return cls(metadata, context.auth_context() or {}, context.peer() or "")

    @classmethod
    def from_metadata(cls, invocation_metadata) -> CallCredentials:
        """From a call's metadata alone (no TLS peer, no peer address)."""
        metadata: dict[str, str] = {}
        for key, value in invocation_metadata or ():
            if isinstance(value, bytes):  # "-bin" keys
                continue
            metadata.setdefault(key.lower(), value)
        return cls(metadata)

    @property
    def bearer(self) -> str | None:
        """The token of `authorization: Bearer <token>`, else None."""
        value = self.metadata.get(AUTHORIZATION)
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    @property
    def presents_credentials(self) -> bool:
        """Whether the call carries an `authorization` value at all."""
        return AUTHORIZATION in self.metadata


class Authenticator(Protocol):
    """One way of establishing who calls (`name`: its PILOTHOUSE_AUTH
    word)."""

    name: str

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        """The principal, or None when the call carries no credential of
        this kind. Raises CredentialRejected for a credential of this kind
        that does not hold, UnavailableError when it cannot be checked now
        (e.g. no JWKS could be fetched yet)."""
        ...
