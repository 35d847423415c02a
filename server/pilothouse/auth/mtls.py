"""`mtls`: the principal is the verified client certificate's identity:
its SPIFFE id (a `spiffe://` URI SAN), else its first URI SAN, else its
first DNS SAN, as grpc's auth context reports them. Needs a server with
TLS and a client CA (PILOTHOUSE_TLS_CLIENT_CA_FILE), which makes grpc
verify the certificate before any call."""

from __future__ import annotations

from pilothouse.auth.credentials import CallCredentials, CredentialRejected
from pilothouse.auth.principal import Principal


def _first(values) -> str:
    for value in values or ():
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text:
            return text
    return ""


def certificate_identity(auth_context) -> str | None:
    """The identity of the peer's verified certificate; None when the
    connection carries none; "" when the certificate names no URI or DNS
    SAN."""
    if _first(auth_context.get("transport_security_type")) != "ssl":
        return None
    if not auth_context.get("x509_pem_cert"):
        return None
    return (
        _first(auth_context.get("peer_spiffe_id"))
        or _first(auth_context.get("peer_uri"))
        or _first(auth_context.get("peer_dns"))
    )


class MtlsAuthenticator:
    name = "mtls"

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        identity = certificate_identity(call.auth_context)
        if identity is None:
            return None
        if not identity:
            raise CredentialRejected("the client certificate names no URI or DNS SAN")
        return Principal(identity, frozenset(), self.name)
