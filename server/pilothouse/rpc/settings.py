"""Settings every Pilothouse server process shares: gRPC connection
handling, TLS, authentication and logging (`PILOTHOUSE_` environment
variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from pilothouse.auth.settings import AuthSettings
from pilothouse.rpc.serving import DEFAULT_MAX_MESSAGE_BYTES, Keepalive
from pilothouse.rpc.tls import ServerTls


class ServerProcessSettings(AuthSettings):
    """gRPC keepalive, connection age and message limits, TLS,
    authentication (AuthSettings) and logging; the runtime's and the
    ToolExecutor's settings extend it."""

    model_config = SettingsConfigDict(env_prefix="PILOTHOUSE_", extra="ignore")

    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="gRPC message limit")
    grpc_keepalive_time: float = Field(
        30.0, gt=0, description="seconds of idleness before the server pings a client"
    )
    grpc_keepalive_timeout: float = Field(
        10.0, gt=0, description="seconds a keepalive ping waits for its ack"
    )
    grpc_min_ping_interval: float = Field(
        10.0, gt=0, description="shortest client ping interval the server accepts, seconds"
    )
    grpc_max_connection_age: float = Field(
        1800.0, ge=0, description="seconds before a connection is asked to go away (0: never)"
    )
    grpc_max_connection_age_grace: float = Field(
        300.0, ge=0, description="seconds a connection's RPCs get after its max age"
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain the server presents (turns TLS on)"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle client certificates must chain to (mutual TLS)"
    )
    tls_client_auth: Literal["required", "optional"] = Field(
        "required", description="with a client CA: a client certificate is required"
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="auto (uvloop where it is installed), uvloop or asyncio"
    )
    log_format: Literal["text", "json"] = Field("text", description="text or json log lines")
    log_level: str = Field("INFO", description="root log level")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _tls(self) -> ServerProcessSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both PILOTHOUSE_TLS_CERT_FILE and PILOTHOUSE_TLS_KEY_FILE")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("PILOTHOUSE_TLS_CLIENT_CA_FILE (mutual TLS) needs TLS: set "
                             "PILOTHOUSE_TLS_CERT_FILE and PILOTHOUSE_TLS_KEY_FILE")
        if self.tls_client_auth == "optional":
            # grpcio's Python API either does not ask for a client
            # certificate or requires and verifies one; it cannot ask for
            # an optional one.
            raise ValueError(
                "PILOTHOUSE_TLS_CLIENT_AUTH=optional is not supported: grpcio either requires "
                "and verifies a client certificate or does not ask for one. Use required, or "
                "leave PILOTHOUSE_TLS_CLIENT_CA_FILE unset and authenticate clients with "
                "tokens or JWTs"
            )
        if "mtls" in self.auth and self.tls_client_ca_file is None:
            raise ValueError("PILOTHOUSE_AUTH=mtls needs PILOTHOUSE_TLS_CLIENT_CA_FILE")
        return self

    @property
    def server_tls(self) -> ServerTls | None:
        """The TLS of the server's port; None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @property
    def keepalive(self) -> Keepalive:
        return Keepalive(
            time_s=self.grpc_keepalive_time,
            timeout_s=self.grpc_keepalive_timeout,
            min_ping_interval_s=self.grpc_min_ping_interval,
            max_connection_age_s=self.grpc_max_connection_age,
            max_connection_age_grace_s=self.grpc_max_connection_age_grace,
        )
