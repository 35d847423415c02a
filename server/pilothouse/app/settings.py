"""Server settings: `PILOTHOUSE_*` environment variables over an optional
TOML config file (`--config` or `PILOTHOUSE_CONFIG`) over the defaults.

`OPENAI_BASE_URL` / `OPENAI_API_KEY` are honoured when
`PILOTHOUSE_MODEL_BASE_URL` / `PILOTHOUSE_MODEL_API_KEY` are unset. With no
base URL at all, the server uses the built-in scripted test model.

The `PILOTHOUSE_MODEL_*` settings describe the default provider; more are
named in `providers` (`[[providers]]` tables in the config file, or JSON in
`PILOTHOUSE_PROVIDERS`), and an agent picks one with `model =
"provider/model"`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pilothouse.auth.limits import Limits
from pilothouse.rpc.settings import ServerProcessSettings
from pilothouse.rpc.tls import ClientTls

TEST_MODEL_NAME = "pilothouse-test-model"
#: The provider name reserved for the default provider ("default/model").
DEFAULT_PROVIDER = "default"
_config_file: ContextVar[str | None] = ContextVar("pilothouse_config_file", default=None)


class ProviderSettings(BaseModel):
    """One named model provider (`[[providers]]`).

    `kind` is the wire format: `openai` (any Chat Completions endpoint) or
    `anthropic` (the Messages API). `base_url` defaults to the kind's
    public API. The API key is read at start-up from the environment
    variable `api_key_env` names (never from the file itself); `headers`
    are sent with every request (e.g. `anthropic-beta`, OpenRouter's
    `X-Title`). Timeouts in seconds, as for the default provider;
    `gen_ai_provider_name` is the `gen_ai.provider.name` of its spans and
    metrics (default: `name`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str = ""
    api_key_env: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)
    idle_timeout: float | None = Field(None, gt=0)
    max_retries: int = Field(3, ge=0)
    gen_ai_provider_name: str = ""

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == DEFAULT_PROVIDER:
            raise ValueError(f"{DEFAULT_PROVIDER!r} names the default provider (PILOTHOUSE_MODEL_*)")
        return value


class Settings(ServerProcessSettings):
    """Every setting of the runtime, with its unit in the name or
    description (the gRPC and logging ones come from ServerProcessSettings)."""

    model_config = SettingsConfigDict(env_prefix="PILOTHOUSE_", extra="ignore")

    listen_address: str = Field("127.0.0.1:50051", description="host:port to serve gRPC on")
    advertise_address: str = Field(
        "",
        description="host:port other replicas reach this one at (default: the listen address, "
        "with this host's name when it listens on every interface)",
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="runtime processes sharing the listen port (auto: the CPUs this process may "
        "use, from its CPU affinity and cgroup quota); more than 1 needs a shared store",
    )
    model_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    model_api_key: SecretStr | None = None
    model: str = Field("", description="default model name for agents that name none")
    model_provider_name: str = Field("openai", description="gen_ai.provider.name for traces")
    model_connect_timeout: float = Field(10.0, gt=0, description="seconds")
    model_read_timeout: float = Field(
        120.0, gt=0, description="seconds until the response (its first byte) arrives"
    )
    model_idle_timeout: float | None = Field(
        None, gt=0, description="seconds of silence once a stream began (default: read timeout)"
    )
    model_max_retries: int = Field(3, ge=0, description="retries of 429/5xx before the first byte")
    providers: list[ProviderSettings] = Field(
        default_factory=list, description="named providers, [[providers]] in the config file"
    )
    tool_executors: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:50052"],
        description="ToolExecutor addresses, comma-separated in the environment",
    )
    tool_timeout: float = Field(60.0, gt=0, description="deadline of one tool call, seconds")
    tool_discovery_timeout: float = Field(
        15.0, gt=0, description="how long start-up waits for each ToolExecutor, seconds"
    )
    tool_rediscovery_interval: float = Field(
        30.0, gt=0, description="seconds between ListTools calls that pick up changed tools"
    )
    agents_file: Path | None = Field(None, description="TOML file of [[agents]]")
    agents_file_watch: bool = Field(
        True, description="apply changes of the agents file while running, as new versions"
    )
    max_content_bytes: int = Field(1024 * 1024, gt=0, description="limit of one user message")
    max_output_chars: int = Field(
        4 * 1024 * 1024, gt=0,
        description="characters one model round may produce (then STOP_REASON_OUTPUT_LIMIT)",
    )
    shutdown_grace: float = Field(10.0, ge=0, description="seconds given to RPCs on SIGTERM")
    store_url: str = Field(
        "sqlite:///sessions.db",
        description="session store: memory://, sqlite:///path.db (relative to data_dir) or postgresql://...",
    )
    data_dir: Path = Field(Path("data"), description="where file-based stores live")
    heartbeat_interval: float = Field(15.0, gt=0, description="seconds of quiet before a heartbeat")
    decision_timeout: float = Field(600.0, gt=0, description="seconds an approval or question waits")
    event_retention: float = Field(
        300.0, ge=0, description="seconds a finished run stays in memory (later reads go to the store)"
    )
    event_log_retention: float = Field(
        7 * 24 * 3600.0, ge=0,
        description="seconds the store keeps a finished run's events (its done is kept)",
    )
    event_flush_interval: float = Field(
        0.05, gt=0, description="seconds between batched writes of the durable event log"
    )
    run_lease: float = Field(30.0, gt=0, description="seconds a run's session lease lasts unrenewed")
    resume_policy: Literal["resume", "interrupt"] = Field(
        "resume", description="what happens to a run whose server stopped: resume it or end it"
    )
    resume_poll_interval: float = Field(
        2.0, gt=0, description="seconds between looks for runs to take over"
    )
    model_stream_retries: int = Field(
        2, ge=0, le=10, description="retries of a model round whose stream failed after it began"
    )
    session_cache_size: int = Field(1000, ge=0, description="histories kept in memory")
    # --- Hooks: plugins of the entry-point group `pilothouse.hooks` -------
    hooks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hook plugins to enable, in call order (comma-separated in the environment; "
        "`enabled` of the config file's [hooks] table)",
    )
    hook_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each plugin's own settings: the config file's [hooks.NAME] tables "
        "(JSON in PILOTHOUSE_HOOK_SETTINGS)",
    )
    generate_titles: bool = Field(True, description="title sessions after the first exchange")

    # --- Delegation and event subscriptions ------------------------------
    delegation_max_depth: int = Field(
        3, ge=0, le=32, description="how deep delegations nest (a client's run's child: 1)"
    )
    delegation_max_runs: int = Field(
        8, ge=0, description="child runs one run may delegate to in all"
    )
    subscription_poll_interval: float = Field(
        0.25, gt=0, description="seconds between SubscribeEvents' reads of other replicas' events"
    )
    subscription_buffer: int = Field(
        1024, gt=0, description="events a SubscribeEvents stream may fall behind before it is dropped"
    )

    # --- Operations: health, drain, connections, metrics, logs ------------
    tool_keepalive_time: float = Field(
        30.0, gt=0, description="seconds of idleness before the tool client pings an executor"
    )
    tool_keepalive_timeout: float = Field(
        10.0, gt=0, description="seconds the tool client's ping waits for its ack"
    )
    tool_lb_policy: Literal["round_robin", "pick_first"] = Field(
        "round_robin", description="gRPC load balancing over an executor address's endpoints"
    )
    health_check_interval: float = Field(
        5.0, gt=0, description="seconds between dependency checks for the health service"
    )
    health_check_timeout: float = Field(
        2.0, gt=0, description="seconds one dependency check may take"
    )
    health_requires_tool_executors: bool = Field(
        False, description="RunService is NOT_SERVING while a ToolExecutor is unreachable"
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port (0: off)"
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    record_content: bool = Field(
        False, description="record message contents and tool arguments/results in spans"
    )

    # --- A2A: every agent as an A2A agent (off by default) ----------------
    a2a_listen_address: str = Field(
        "", description="host:port of the A2A JSON-RPC HTTP server (empty: off)"
    )
    a2a_grpc: bool = Field(
        False, description="serve A2A's gRPC binding (lf.a2a.v1.A2AService) on the runtime's gRPC port"
    )
    a2a_public_url: str = Field(
        "", description="the A2A server's URL as clients reach it, e.g. https://agents.example.com "
        "(default: http://<listen address>)",
    )

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: list[ProviderSettings]) -> list[ProviderSettings]:
        names = [p.name for p in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"provider names must be unique: {', '.join(repeated)}")
        return value
    # --- Security: health port, outbound TLS, limits (TLS and auth of the
    # server itself are in ServerProcessSettings) ---------------------------
    health_listen_address: str = Field(
        "", description="host:port of a plaintext port serving only grpc.health.v1 (empty: none)"
    )
    client_cert_file: Path | None = Field(
        None, description="PEM certificate the runtime presents to ToolExecutors and replicas"
    )
    client_key_file: Path | None = Field(None, description="PEM private key of client_cert_file")
    tool_executors_tls: bool = Field(False, description="call the ToolExecutors over TLS")
    tool_executors_ca_file: Path | None = Field(
        None, description="CA bundle ToolExecutor certificates chain to (implies TLS)"
    )
    tool_executors_server_name: str = Field(
        "", description="name to verify in the ToolExecutors' certificates"
    )
    tool_executors_token: SecretStr | None = Field(
        None, description="bearer token sent to the ToolExecutors"
    )
    peer_tls: bool | None = Field(
        None, description="forward calls to other replicas over TLS (default: when serving TLS)"
    )
    peer_ca_file: Path | None = Field(None, description="CA bundle replica certificates chain to")
    peer_server_name: str = Field(
        "", description="name to verify in other replicas' certificates (they are called by IP)"
    )
    approval_exempt_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="tools whose ToolExecutor's requires_approval is lifted (an audited admin setting)",
    )
    # --- Browsers: the web port (Connect, gRPC-Web, the web console) ------
    web_listen_address: str = Field(
        "", description="host:port of the browser port (Connect, gRPC-Web, console); empty: off"
    )
    web_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins of other sites whose pages may call the web port (comma-separated; "
        "* for any); empty: its own pages only",
    )
    web_console: bool = Field(True, description="serve the web console on the web port")
    web_trace_url: str = Field(
        "", description="trace viewer URL with {trace_id}, linked from the console's runs"
    )
    limit_concurrent_runs: int = Field(0, ge=0, description="active runs per principal (0: no limit)")
    limit_runs_per_minute: int = Field(0, ge=0, description="runs started per principal per minute")
    limit_sessions_per_minute: int = Field(
        0, ge=0, description="sessions created per principal per minute"
    )
    limit_content_bytes_per_minute: int = Field(
        0, ge=0, description="bytes of user and steering messages per principal per minute"
    )

    @field_validator("hooks")
    @classmethod
    def _unique_hooks(cls, value: list[str]) -> list[str]:
        repeated = sorted({n for n in value if value.count(n) > 1})
        if repeated:
            raise ValueError(f"hooks are named twice: {', '.join(repeated)}")
        return value

    @field_validator(
        "tool_executors", "approval_exempt_tools", "web_cors_origins", "hooks", mode="before"
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _openai_fallbacks(self) -> Settings:
        if self.model_base_url is None and os.environ.get("OPENAI_BASE_URL"):
            self.model_base_url = os.environ["OPENAI_BASE_URL"]
        if self.model_api_key is None and os.environ.get("OPENAI_API_KEY"):
            self.model_api_key = SecretStr(os.environ["OPENAI_API_KEY"])
        return self

    @model_validator(mode="before")
    @classmethod
    def _content_capture_fallback(cls, data: Any) -> Any:
        # OpenTelemetry's GenAI instrumentations use this variable for the
        # same opt-in; PILOTHOUSE_RECORD_CONTENT wins when both are set.
        standard = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        if (
            standard
            and isinstance(data, dict)
            and "record_content" not in data
            and "PILOTHOUSE_RECORD_CONTENT" not in os.environ
        ):
            data = {**data, "record_content": standard.strip().lower() in {"1", "true", "yes"}}
        return data

    @model_validator(mode="after")
    def _outbound(self) -> Settings:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "a client certificate needs PILOTHOUSE_CLIENT_CERT_FILE and PILOTHOUSE_CLIENT_KEY_FILE"
            )
        budget = self.limit_content_bytes_per_minute
        if budget and budget < self.max_content_bytes:
            raise ValueError(
                "PILOTHOUSE_LIMIT_CONTENT_BYTES_PER_MINUTE must be at least "
                "PILOTHOUSE_MAX_CONTENT_BYTES (or 0), or the largest message could never be sent"
            )
        return self

    @property
    def limits(self) -> Limits:
        return Limits(
            concurrent_runs=self.limit_concurrent_runs,
            runs_per_minute=self.limit_runs_per_minute,
            sessions_per_minute=self.limit_sessions_per_minute,
            content_bytes_per_minute=self.limit_content_bytes_per_minute,
        )

    @property
    def tool_executors_client_tls(self) -> ClientTls | None:
        """TLS of the channels to the ToolExecutors; None: plaintext."""
        if not (self.tool_executors_tls or self.tool_executors_ca_file):
            return None
        return ClientTls(
            self.tool_executors_ca_file, self.client_cert_file, self.client_key_file,
            self.tool_executors_server_name,
        )

    @property
    def peer_client_tls(self) -> ClientTls | None:
        """TLS of the channels to other replicas; None: plaintext."""
        tls = self.peer_tls if self.peer_tls is not None else self.server_tls is not None
        if not (tls or self.peer_ca_file):
            return None
        return ClientTls(
            self.peer_ca_file, self.client_cert_file, self.client_key_file, self.peer_server_name
        )

    @property
    def uses_test_model(self) -> bool:
        return not self.model_base_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("PILOTHOUSE_CONFIG")
        if config_file:
            sources.append(_ConfigFile(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


class _ConfigFile(TomlConfigSettingsSource):
    """The TOML config file, with its `[hooks]` table read as `enabled =
    [names]` (the `hooks` setting) and one table per plugin
    (`hook_settings`)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        table = data.get("hooks")
        if isinstance(table, dict):
            data = dict(data)
            plugins = {k: v for k, v in table.items() if k != "enabled"}
            data["hooks"] = table.get("enabled", [])
            data["hook_settings"] = {**plugins, **data.get("hook_settings", {})}
        return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, `config_file` (else
    `PILOTHOUSE_CONFIG`) and `overrides`, which win. Raises
    pydantic.ValidationError for bad values and FileNotFoundError for a
    missing config file."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} not found")
    token = _config_file.set(str(config_file))
    try:
        return Settings(**overrides)
    finally:
        _config_file.reset(token)
