"""Settings every Pilothouse server process shares: gRPC connection
handling and logging (`PILOTHOUSE_` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pilothouse.rpc.serving import DEFAULT_MAX_MESSAGE_BYTES, Keepalive


class ServerProcessSettings(BaseSettings):
    """gRPC keepalive, connection age and message limits, and logging; the
    runtime's and the ToolExecutor's settings extend it."""

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
    log_format: Literal["text", "json"] = Field("text", description="text or json log lines")
    log_level: str = Field("INFO", description="root log level")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @property
    def keepalive(self) -> Keepalive:
        return Keepalive(
            time_s=self.grpc_keepalive_time,
            timeout_s=self.grpc_keepalive_timeout,
            min_ping_interval_s=self.grpc_min_ping_interval,
            max_connection_age_s=self.grpc_max_connection_age,
            max_connection_age_grace_s=self.grpc_max_connection_age_grace,
        )
