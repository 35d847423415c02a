"""Authentication settings (`PILOTHOUSE_AUTH*` environment variables),
shared by the runtime and the reference ToolExecutor: each process reads
its own environment, so give them different values where they differ (the
Kubernetes manifests do)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

AuthMode = Literal["none", "tokens", "jwt", "mtls", "mesh"]

#: Asymmetric algorithms only by default: HS* needs an explicit choice
#: (and an `oct` key in a JWKS file).
DEFAULT_JWT_ALGORITHMS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]


def split_list(value: Any) -> Any:
    """A comma-separated environment value as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AuthSettings(BaseSettings):
    """Who may call: `auth` lists the ways credentials are checked, tried
    in order (the first that recognises the call's credential decides)."""

    model_config = SettingsConfigDict(env_prefix="PILOTHOUSE_", extra="ignore")

    auth: Annotated[list[AuthMode], NoDecode] = Field(
        default_factory=lambda: ["none"],
        description="none | tokens | jwt | mtls | mesh, comma-separated, tried in order",
    )
    allow_unauthenticated: bool = Field(
        False, description="allow `none` on an address other hosts can reach"
    )
    auth_admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="principal ids that get the admin role"
    )
    auth_default_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["user"],
        description="roles of a principal whose credential names none",
    )
    auth_trusted_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="principal ids (other replicas) that may forward calls on behalf of "
        "the principal they authenticated",
    )
    auth_tokens_file: Path | None = Field(None, description="TOML file of hashed bearer tokens")
    auth_jwt_jwks_url: str | None = Field(None, description="JWKS URL of the token issuer")
    auth_jwt_jwks_file: Path | None = Field(None, description="JWKS file (instead of a URL)")
    auth_jwt_issuer: str = Field("", description="required `iss`")
    auth_jwt_audience: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted `aud` values"
    )
    auth_jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS),
        description="accepted `alg` values (never none)",
    )
    auth_jwt_principal_claim: str = Field("sub", description="claim naming the principal")
    auth_jwt_roles_claim: str = Field("roles", description="claim (dotted path) listing roles")
    auth_jwt_leeway: float = Field(30.0, ge=0, description="seconds of clock skew accepted")
    auth_jwt_jwks_cache_ttl: float = Field(300.0, gt=0, description="seconds a fetched JWKS is used")
    auth_jwt_jwks_min_refresh: float = Field(
        30.0, gt=0, description="fewest seconds between two JWKS fetches for unknown key ids"
    )
    auth_mesh_identity_header: str = Field(
        "x-forwarded-client-cert",
        description="header the sidecar sets: XFCC (Istio/Envoy) or l5d-client-id (Linkerd)",
    )
    auth_mesh_claims_header: str = Field(
        "", description="header with the base64url JSON claims of a JWT the mesh verified"
    )
    auth_mesh_trusted_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="listen hosts besides loopback that only the sidecar can reach",
    )

    @field_validator(
        "auth", "auth_admins", "auth_default_roles", "auth_trusted_peers", "auth_jwt_audience",
        "auth_jwt_algorithms", "auth_mesh_trusted_addresses", mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("auth")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one of none, tokens, jwt, mtls, mesh")
        if len(set(value)) != len(value):
            raise ValueError("a mode is named twice")
        return value

    @field_validator("auth_jwt_algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one algorithm")
        if any(a.lower() == "none" for a in value):
            raise ValueError("'none' is never an accepted JWT algorithm")
        return value

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if "tokens" in self.auth and self.auth_tokens_file is None:
            raise ValueError("PILOTHOUSE_AUTH=tokens needs PILOTHOUSE_AUTH_TOKENS_FILE")
        if "jwt" in self.auth:
            if (self.auth_jwt_jwks_url is None) == (self.auth_jwt_jwks_file is None):
                raise ValueError(
                    "PILOTHOUSE_AUTH=jwt needs one of PILOTHOUSE_AUTH_JWT_JWKS_URL and "
                    "PILOTHOUSE_AUTH_JWT_JWKS_FILE"
                )
            if not self.auth_jwt_issuer or not self.auth_jwt_audience:
                raise ValueError(
                    "PILOTHOUSE_AUTH=jwt needs PILOTHOUSE_AUTH_JWT_ISSUER and "
                    "PILOTHOUSE_AUTH_JWT_AUDIENCE"
                )
        return self
