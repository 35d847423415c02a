"""`mesh`: trust the identity a sidecar proxy forwards.

- Istio and Envoy: `x-forwarded-client-cert` (XFCC), which the sidecar
  sets from the mTLS peer it verified; the last element is the immediate
  client, whose `URI` (SPIFFE id), else `DNS`, is the principal.
- Linkerd: its proxy sets `l5d-client-id` (the client's mesh identity) on
  meshed inbound requests: set the identity header to that name and its
  value is the principal as is.
- A header carrying the claims of a JWT the mesh verified (Istio's
  RequestAuthentication `outputPayloadToHeader`): base64url JSON; the
  principal and roles come from the same claims as `jwt`.

Only safe when nothing but the sidecar can reach the server, so the
server refuses to start with `mesh` unless it listens on loopback or on
an address declared trusted (`PILOTHOUSE_AUTH_MESH_TRUSTED_ADDRESSES`).
"""

from __future__ import annotations

import base64
import json

from pilothouse.auth.credentials import CallCredentials, CredentialRejected
from pilothouse.auth.jwt_bearer import principal_from_claims
from pilothouse.auth.principal import Principal

XFCC = "x-forwarded-client-cert"


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes (backslash escapes)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_xfcc(header: str) -> list[dict[str, list[str]]]:
    """The elements of an XFCC header, oldest hop first, each a map of
    key (lower case: by, hash, cert, chain, subject, uri, dns) to values."""
    elements = []
    for element in _split(header, ","):
        pairs: dict[str, list[str]] = {}
        for pair in _split(element, ";"):
            key, sep, value = pair.partition("=")
            if sep:
                pairs.setdefault(key.strip().lower(), []).append(_unquote(value))
        if pairs:
            elements.append(pairs)
    return elements


def xfcc_identity(header: str) -> str:
    """The immediate client's identity in an XFCC header: its URI, else
    its DNS name; "" when it names neither."""
    elements = parse_xfcc(header)
    if not elements:
        return ""
    last = elements[-1]
    for key in ("uri", "dns"):
        for value in last.get(key, []):
            if value:
                return value
    return ""


def _claims(value: str) -> dict:
    padded = value.strip() + "=" * (-len(value.strip()) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialRejected(f"mesh claims header is not base64url JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise CredentialRejected("mesh claims header is not a JSON object")
    return claims


class MeshAuthenticator:
    name = "mesh"

    def __init__(
        self,
        *,
        identity_header: str = XFCC,
        claims_header: str = "",
        principal_claim: str = "sub",
        roles_claim: str = "roles",
    ) -> None:
        self.identity_header = identity_header.lower()
        self.claims_header = claims_header.lower()
        self.principal_claim = principal_claim
        self.roles_claim = roles_claim

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        if self.claims_header and self.claims_header in call.metadata:
            claims = _claims(call.metadata[self.claims_header])
            return principal_from_claims(claims, self.principal_claim, self.roles_claim, self.name)
        if not self.identity_header or self.identity_header not in call.metadata:
            return None
        value = call.metadata[self.identity_header]
        identity = xfcc_identity(value) if self.identity_header == XFCC else value.strip()
        if not identity:
            raise CredentialRejected(f"{self.identity_header} names no identity")
        return Principal(identity, frozenset(), self.name)
