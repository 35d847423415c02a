"""`jwt`: bearer JWTs verified with PyJWT against a JWKS.

A token is accepted only if its header's `alg` is one of the allowed
algorithms (never `none`), the key it names (`kid`; a token without one
needs a set with exactly one usable key) is of that algorithm's key type
(an RSA public key is never an HMAC secret: no HS/RS confusion), its
signature holds, and its `iss`, `aud` and `exp` (required), `nbf` and
`iat` check out, with `leeway_s` of clock skew. The principal is the
`principal_claim` (default `sub`); roles come from `roles_claim`, a list
of strings or one space- or comma-separated string, found by a dotted path
(`realm_access.roles` for Keycloak).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jwt

from pilothouse.auth.credentials import CallCredentials, CredentialRejected
from pilothouse.auth.jwks import Jwk
from pilothouse.auth.principal import Principal


class KeySource(Protocol):
    async def keys(self, refresh: bool = False) -> list[Jwk]: ...


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a dotted `path`, or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_from(value: Any) -> frozenset[str]:
    """Roles from a claim value: a list of strings, or one string of names
    separated by spaces or commas; anything else gives none."""
    if isinstance(value, str):
        return frozenset(r for r in value.replace(",", " ").split() if r)
    if isinstance(value, list):
        return frozenset(r for r in value if isinstance(r, str) and r)
    return frozenset()


def principal_from_claims(
    claims: Mapping[str, Any], principal_claim: str, roles_claim: str, source: str
) -> Principal:
    """The principal verified claims describe. Raises CredentialRejected
    when the principal claim is missing or not a string."""
    subject = claim_at(claims, principal_claim)
    if not isinstance(subject, str) or not subject:
        raise CredentialRejected(f"claim {principal_claim!r} missing or not a string")
    return Principal(subject, roles_from(claim_at(claims, roles_claim)), source)


class JwtAuthenticator:
    name = "jwt"

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: Sequence[str],
        algorithms: Sequence[str],
        principal_claim: str = "sub",
        roles_claim: str = "roles",
        leeway_s: float = 30.0,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("JWT verification needs an issuer and an audience")
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("the allowed JWT algorithms must be named and never include 'none'")
        self.keys = keys
        self.issuer = issuer
        self.audience = list(audience)
        self.algorithms = frozenset(algorithms)
        self.principal_claim = principal_claim
        self.roles_claim = roles_claim
        self.leeway_s = leeway_s

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        token = call.bearer
        if token is None or token.count(".") != 2:
            return None  # not a compact JWS: another authenticator's token
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise CredentialRejected(f"malformed JWT header: {exc}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise CredentialRejected(f"JWT algorithm {algorithm!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise CredentialRejected("JWT kid is not a string")
        key = await self._key(kid, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise CredentialRejected(f"JWT refused: {type(exc).__name__}: {exc}") from None
        return principal_from_claims(claims, self.principal_claim, self.roles_claim, self.name)

    async def _key(self, kid: str | None, algorithm: str) -> Any:
        """The key to verify with; refreshes the set once when `kid` is
        unknown. Raises CredentialRejected."""
        for refresh in (False, True):
            keys = await self.keys.keys(refresh=refresh)
            usable = [k for k in keys if k.usable_for(algorithm)]
            if kid is None:
                if len(usable) == 1:
                    return self._load(usable[0], algorithm)
                raise CredentialRejected("JWT names no kid and the JWKS has no single key for it")
            for candidate in usable:
                if candidate.kid == kid:
                    return self._load(candidate, algorithm)
            if any(k.kid == kid for k in keys):
                raise CredentialRejected(f"JWT key {kid!r} cannot verify {algorithm}")
        raise CredentialRejected(f"JWT key {kid!r} is not in the JWKS")

    @staticmethod
    def _load(key: Jwk, algorithm: str) -> Any:
        try:
            return key.key_for(algorithm)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            raise CredentialRejected(f"JWKS key {key.kid!r} unusable: {exc}") from None
