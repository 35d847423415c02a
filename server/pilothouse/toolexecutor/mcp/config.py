"""The ToolExecutor's config file: the MCP servers whose tools it hosts.

A TOML file (`pilothouse-tools --config FILE` or `PILOTHOUSE_TOOLS_CONFIG`)::

    destructive_requires_approval = true     # the default for every server

    [[mcp_servers]]
    name = "files"                           # also the tools' prefix: files__read_file
    command = "npx"                          # stdio: a command the ToolExecutor starts
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
    env = { LOG_LEVEL = "warn" }

    [[mcp_servers]]
    name = "search"
    url = "https://mcp.example.com/mcp"      # streamable HTTP
    headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
    prefix = "web"                           # web__query instead of search__query

`${VAR}` in `command`, `args`, `env`, `cwd`, `url` and `headers` is
replaced by the environment variable VAR (an unset one is an error), so
secrets stay out of the file. Times are in seconds. Unknown keys are errors.
This module only reads the file; it does not need the `mcp` package.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pilothouse.toolexecutor.schema import location_text

__all__ = [
    "SERVER_NAME_PATTERN",
    "ConfigError",
    "McpServerConfig",
    "ToolsConfig",
    "load_tools_config",
]

#: A server name: also its health service name (`mcp/<name>`) and the default prefix.
SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
_PREFIX_PATTERN = r"^[A-Za-z0-9_-]{0,32}$"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Seconds = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """The config file cannot be read or is invalid; the message says where."""


class McpServerConfig(BaseModel):
    """One MCP server: either a stdio `command` or a streamable HTTP `url`.

    `prefix` namespaces its tools (`<prefix>__<tool>`; default: `name`; ""
    keeps the server's own names). `connect_timeout` bounds starting the
    server, the MCP handshake and the first `tools/list`; `call_timeout`
    is a call's timeout when the ExecuteTool call has no deadline;
    `ping_interval` (0: never) is how often an idle connection is checked
    with an MCP ping, which must answer within `ping_timeout`. A server that
    exits or cannot be reached is started again (stdio) or reconnected
    (HTTP) after `backoff_initial` seconds, doubling up to `backoff_max`.
    `requires_approval`: every tool of the server waits for a human
    decision; `destructive_requires_approval` (default: the file's
    top-level value) does so for the tools that MCP annotations call
    destructive. `required`: while this server is down the whole
    ToolExecutor reports NOT_SERVING, not only `mcp/<name>`.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SERVER_NAME_PATTERN)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    prefix: str | None = Field(None, pattern=_PREFIX_PATTERN)
    connect_timeout: Seconds = 30.0
    call_timeout: Seconds = 300.0
    ping_interval: float = Field(15.0, ge=0)
    ping_timeout: Seconds = 10.0
    backoff_initial: Seconds = 0.5
    backoff_max: Seconds = 30.0
    requires_approval: bool = False
    destructive_requires_approval: bool | None = None
    required: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (streamable HTTP)")
        if self.command is not None and self.headers:
            raise ValueError("`headers` apply to a `url` server only")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("`args`, `env` and `cwd` apply to a `command` server only")
        return self

    @property
    def transport(self) -> str:
        """"stdio" or "http"."""
        return "stdio" if self.command is not None else "http"

    @property
    def tool_prefix(self) -> str:
        return self.name if self.prefix is None else self.prefix

    @property
    def health_service(self) -> str:
        """The name its status has in grpc.health.v1."""
        return f"mcp/{self.name}"


class ToolsConfig(BaseModel):
    """The whole file. `destructive_requires_approval` (default true) is
    every server's default."""

    model_config = ConfigDict(extra="forbid")

    destructive_requires_approval: bool = True
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ToolsConfig:
        seen: set[str] = set()
        prefixes: set[str] = set()
        for server in self.mcp_servers:
            if server.name in seen:
                raise ValueError(f"two MCP servers are named {server.name!r}")
            seen.add(server.name)
            if server.tool_prefix and server.tool_prefix in prefixes:
                raise ValueError(f"two MCP servers use the prefix {server.tool_prefix!r}")
            prefixes.add(server.tool_prefix)
            if server.destructive_requires_approval is None:
                server.destructive_requires_approval = self.destructive_requires_approval
        return self


def load_tools_config(path: Path | str) -> ToolsConfig:
    """Read and validate the config file at `path`, with `${VAR}` replaced
    from the environment. Raises ConfigError naming the file and what is
    wrong (missing file, bad TOML, an invalid or unknown key, an unset
    variable)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    servers = data.get("mcp_servers")
    if isinstance(servers, list):
        for index, server in enumerate(servers):
            if isinstance(server, dict):
                _expand_server(server, f"{path}: mcp_servers[{index}]")
    try:
        return ToolsConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid:\n{_problems(exc)}") from None


def _expand_server(server: dict[str, Any], where: str) -> None:
    for key in ("command", "cwd", "url"):
        if isinstance(server.get(key), str):
            server[key] = _expand(server[key], f"{where}.{key}")
    if isinstance(server.get("args"), list):
        server["args"] = [
            _expand(a, f"{where}.args") if isinstance(a, str) else a for a in server["args"]
        ]
    for key in ("env", "headers"):
        table = server.get(key)
        if isinstance(table, dict):
            server[key] = {
                k: _expand(v, f"{where}.{key}.{k}") if isinstance(v, str) else v
                for k, v in table.items()
            }


def _expand(value: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(replace, value)


def _problems(error: pydantic.ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False):
        lines.append(f"- {location_text(item['loc'], '(top level)')}: {item['msg']}")
    return "\n".join(lines)
