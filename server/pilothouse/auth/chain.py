"""The configured authenticators, tried in order, and the checks that
keep a server from being exposed without authentication."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from pilothouse.auth.credentials import Authenticator, CallCredentials, CredentialRejected
from pilothouse.auth.jwks import JwksFile, JwksUrl
from pilothouse.auth.jwt_bearer import JwtAuthenticator
from pilothouse.auth.mesh import MeshAuthenticator
from pilothouse.auth.mtls import MtlsAuthenticator
from pilothouse.auth.principal import ADMIN, ANONYMOUS, Principal
from pilothouse.auth.settings import AuthSettings
from pilothouse.auth.tokens import TokensAuthenticator
from pilothouse.errors import PermissionDeniedError, PilothouseError, UnauthenticatedError
from pilothouse.rpc.tls import is_loopback, listen_host

log = logging.getLogger(__name__)

#: Metadata a replica adds to a call it forwards for a principal that
#: another replica cannot re-authenticate (e.g. by its client
#: certificate): JSON {"id", "roles", "source"}. Accepted only from
#: `trusted_peers`.
ON_BEHALF_OF = "x-pilothouse-on-behalf-of"


class AuthRefused(Exception):
    """A call refused by authentication: `error` is what the caller gets
    (UNAUTHENTICATED or PERMISSION_DENIED, nothing specific), `detail` why,
    for the audit log only."""

    def __init__(self, error: PilothouseError, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def missing_credentials() -> UnauthenticatedError:
    return UnauthenticatedError("missing credentials", reason="CREDENTIALS_MISSING")


def invalid_credentials() -> UnauthenticatedError:
    return UnauthenticatedError("invalid credentials", reason="CREDENTIALS_INVALID")


def permission_denied() -> PermissionDeniedError:
    return PermissionDeniedError("permission denied", reason="PERMISSION_DENIED")


class NoneAuthenticator:
    """`none`: a call without credentials is the anonymous admin."""

    name = "none"

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        return None if call.presents_credentials else ANONYMOUS


class AuthChain:
    """Authenticators tried in order: the first that returns a principal
    decides. A principal whose credential names no roles gets
    `default_roles`; ids in `admins` get `admin` too."""

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        admins: Sequence[str] = (),
        default_roles: Sequence[str] = ("user",),
        trusted_peers: Sequence[str] = (),
    ) -> None:
        if not authenticators:
            raise ValueError("at least one authenticator")
        self.authenticators = list(authenticators)
        self.names = [a.name for a in self.authenticators]
        self.anonymous_only = self.names == ["none"]
        self.admins = frozenset(admins)
        self.default_roles = frozenset(default_roles)
        self.trusted_peers = frozenset(trusted_peers)

    async def authenticate(self, call: CallCredentials) -> Principal:
        """The caller's principal. Raises AuthRefused, or UnavailableError
        when a credential cannot be checked right now."""
        if self.anonymous_only:
            return ANONYMOUS
        rejections: list[str] = []
        for authenticator in self.authenticators:
            try:
                principal = await authenticator.authenticate(call)
            except CredentialRejected as exc:
                rejections.append(f"{authenticator.name}: {exc}")
                continue
            if principal is not None:
                return self._on_behalf(call, self._complete(principal))
        if rejections:
            raise AuthRefused(invalid_credentials(), "; ".join(rejections))
        raise AuthRefused(missing_credentials(), "no credentials")

    def _complete(self, principal: Principal) -> Principal:
        if principal is ANONYMOUS:
            return principal
        roles = principal.roles or self.default_roles
        if principal.id in self.admins:
            roles = roles | {ADMIN}
        return principal if roles == principal.roles else principal.with_roles(roles)

    def _on_behalf(self, call: CallCredentials, direct: Principal) -> Principal:
        """The principal a trusted replica forwarded the call for, else
        `direct`."""
        asserted = call.metadata.get(ON_BEHALF_OF)
        if asserted is None:
            return direct
        if direct.id not in self.trusted_peers:
            raise AuthRefused(
                permission_denied(), f"{ON_BEHALF_OF} from {direct.id!r}, not a trusted peer"
            )
        try:
            data = json.loads(asserted)
            return Principal(
                str(data["id"]),
                frozenset(str(r) for r in data.get("roles", [])),
                str(data.get("source", "")),
                forwarded_by=direct.id,
            )
        except (ValueError, KeyError, TypeError):
            raise AuthRefused(invalid_credentials(), f"malformed {ON_BEHALF_OF}") from None


def on_behalf_of(principal: Principal) -> str:
    """The ON_BEHALF_OF value for `principal`."""
    return json.dumps(
        {"id": principal.id, "roles": sorted(principal.roles), "source": principal.source},
        separators=(",", ":"),
    )


def build_chain(settings: AuthSettings) -> AuthChain:
    """The AuthChain `settings` describe. Raises ValueError (or OSError)
    for a tokens or JWKS file that cannot be read."""
    authenticators: list[Authenticator] = []
    for mode in settings.auth:
        if mode == "none":
            authenticators.append(NoneAuthenticator())
        elif mode == "tokens":
            assert settings.auth_tokens_file is not None
            authenticators.append(TokensAuthenticator(settings.auth_tokens_file))
        elif mode == "jwt":
            keys = (
                JwksFile(settings.auth_jwt_jwks_file)
                if settings.auth_jwt_jwks_file is not None
                else JwksUrl(
                    settings.auth_jwt_jwks_url or "",
                    cache_ttl_s=settings.auth_jwt_jwks_cache_ttl,
                    min_refresh_s=settings.auth_jwt_jwks_min_refresh,
                )
            )
            authenticators.append(
                JwtAuthenticator(
                    keys,
                    issuer=settings.auth_jwt_issuer,
                    audience=settings.auth_jwt_audience,
                    algorithms=settings.auth_jwt_algorithms,
                    principal_claim=settings.auth_jwt_principal_claim,
                    roles_claim=settings.auth_jwt_roles_claim,
                    leeway_s=settings.auth_jwt_leeway,
                )
            )
        elif mode == "mtls":
            authenticators.append(MtlsAuthenticator())
        elif mode == "mesh":
            authenticators.append(
                MeshAuthenticator(
                    identity_header=settings.auth_mesh_identity_header,
                    claims_header=settings.auth_mesh_claims_header,
                    principal_claim=settings.auth_jwt_principal_claim,
                    roles_claim=settings.auth_jwt_roles_claim,
                )
            )
    return AuthChain(
        authenticators,
        admins=settings.auth_admins,
        default_roles=settings.auth_default_roles,
        trusted_peers=settings.auth_trusted_peers,
    )


def check_exposure(settings: AuthSettings, listen_address: str, server: str) -> None:
    """Refuse (ValueError with the fix) what would expose `server`: `none`
    on an address other hosts can reach without
    PILOTHOUSE_ALLOW_UNAUTHENTICATED=true, and `mesh` where more than the
    sidecar can reach it. Logs a warning whenever `none` is on."""
    local = is_loopback(listen_address)
    if "none" in settings.auth:
        log.warning(
            "%s: authentication is off for calls without credentials (PILOTHOUSE_AUTH "
            "includes none): they run as the anonymous admin", server,
        )
        if not local and not settings.allow_unauthenticated:
            raise ValueError(
                f"refusing to serve {listen_address} without authentication: other hosts can "
                "reach it. Set PILOTHOUSE_AUTH (tokens, jwt, mtls or mesh), listen on "
                "127.0.0.1, or set PILOTHOUSE_ALLOW_UNAUTHENTICATED=true"
            )
    if "mesh" in settings.auth and not local:
        if listen_host(listen_address) not in settings.auth_mesh_trusted_addresses:
            raise ValueError(
                f"refusing PILOTHOUSE_AUTH=mesh on {listen_address}: the identity headers are "
                "trusted only where nothing but the sidecar reaches the server. Listen on "
                "127.0.0.1, or name the host in PILOTHOUSE_AUTH_MESH_TRUSTED_ADDRESSES"
            )
