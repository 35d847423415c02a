"""`pilothouse-tools`: serve the default tool registry (the built-ins).

Usage: ``pilothouse-tools [--listen HOST:PORT] [--config FILE] [--log-level LEVEL]``.
Once serving, prints "pilothouse-tools listening on HOST:PORT" on stdout.
With a config file naming MCP servers (`pilothouse.toolexecutor.mcp.config`),
their tools are served too; start-up waits for each server's first
connection attempt.

Settings (environment):

- `PILOTHOUSE_TOOLS_LISTEN_ADDRESS` (127.0.0.1:50052; --listen wins)
- `PILOTHOUSE_TOOLS_CONFIG` (none; --config wins): the config file
- `PILOTHOUSE_TOOLS_SHUTDOWN_GRACE` (10): seconds in-flight calls get on SIGTERM
- `PILOTHOUSE_TOOLS_METRICS_PORT` (9465, 0: off), `PILOTHOUSE_TOOLS_METRICS_HOST`
  (127.0.0.1): the Prometheus endpoint
- `PILOTHOUSE_TOOLS_HEALTH_LISTEN_ADDRESS` (empty: none): a plaintext port
  serving only grpc.health.v1, for Kubernetes probes
- shared with the runtime (same names, read from this process's
  environment): TLS (`PILOTHOUSE_TLS_CERT_FILE`, `_KEY_FILE`,
  `_CLIENT_CA_FILE` for mutual TLS) and authentication of the caller
  (`PILOTHOUSE_AUTH`: `mtls` or `tokens` for the runtime; `none`, the
  default, only on loopback unless `PILOTHOUSE_ALLOW_UNAUTHENTICATED=true`),
  `PILOTHOUSE_MAX_MESSAGE_BYTES`,
  `PILOTHOUSE_GRPC_KEEPALIVE_TIME`, `_KEEPALIVE_TIMEOUT`, `_MIN_PING_INTERVAL`,
  `_MAX_CONNECTION_AGE`, `_MAX_CONNECTION_AGE_GRACE`, `PILOTHOUSE_LOG_FORMAT`
  (text, json), `PILOTHOUSE_LOG_LEVEL`, and the `OTEL_*` variables.

SIGTERM or SIGINT drains: health NOT_SERVING at once, new calls refused,
in-flight calls get the grace to finish; a second signal cancels them;
then the MCP servers' connections close. Exits 0 after a signal, 1 if it
cannot start (an address cannot be bound, TLS files do not load,
authentication is off on an exposed address), 2 for bad settings or a bad
config file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from pilothouse.auth import build_chain, check_exposure
from pilothouse.ops import eventloop
from pilothouse.ops.logs import configure_logging
from pilothouse.ops.metrics import start_metrics
from pilothouse.ops.telemetry import configure_tracing, installed_tracer_provider, resource_for
from pilothouse.rpc.serving import StopSignals
from pilothouse.rpc.settings import ServerProcessSettings
from pilothouse.toolexecutor import ToolRegistry, default_registry
from pilothouse.toolexecutor.mcp.config import ConfigError, ToolsConfig, load_tools_config
from pilothouse.toolexecutor.metrics import ToolExecutorMetrics
from pilothouse.toolexecutor.service import SERVICE_NAME as EXECUTOR_SERVICE, serve_tools
from pilothouse.toolexecutor.sources import ToolSource, ToolSources

if TYPE_CHECKING:  # the MCP SDK is imported only when a config names servers
    from pilothouse.toolexecutor.mcp.hosts import McpHosts

log = logging.getLogger("pilothouse.toolexecutor")

SERVICE_NAME = "pilothouse-tools"
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:50052"
LISTEN_ADDRESS_ENV = "PILOTHOUSE_TOOLS_LISTEN_ADDRESS"
#: Seconds in-flight calls get to finish on SIGTERM/SIGINT, by default.
DRAIN_GRACE_SECONDS = 10.0
DEFAULT_METRICS_PORT = 9465


class ToolsSettings(ServerProcessSettings):
    """The reference ToolExecutor's settings (`PILOTHOUSE_` prefix); the gRPC
    and logging ones are shared with the runtime (ServerProcessSettings)."""

    model_config = SettingsConfigDict(env_prefix="PILOTHOUSE_", extra="ignore")

    tools_listen_address: str = Field(DEFAULT_LISTEN_ADDRESS, description="host:port to serve on")
    tools_shutdown_grace: float = Field(
        DRAIN_GRACE_SECONDS, ge=0, description="seconds in-flight calls get on SIGTERM"
    )
    tools_metrics_port: int = Field(
        DEFAULT_METRICS_PORT, ge=0, le=65535, description="Prometheus /metrics port (0: off)"
    )
    tools_metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    tools_config: Path | None = Field(
        None, description="TOML config file: the MCP servers whose tools are served"
    )
    tools_health_listen_address: str = Field(
        "", description="host:port of a plaintext port serving only grpc.health.v1 (empty: none)"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pilothouse-tools",
        description="Serve the built-in Pilothouse tools as pilothouse.v1.ToolExecutorService.",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to listen on (default: ${LISTEN_ADDRESS_ENV} or {DEFAULT_LISTEN_ADDRESS};"
        " port 0 picks a free port)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file naming MCP servers to host (default: $PILOTHOUSE_TOOLS_CONFIG)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default: $PILOTHOUSE_LOG_LEVEL or INFO)",
    )
    return parser.parse_args(argv)


def _shown_address(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return f"{host}:{port}"


def load_config(settings: ToolsSettings) -> ToolsConfig | None:
    """The config file named by the settings, or None. Raises ConfigError
    for a bad file, or one naming MCP servers when the `mcp` package is
    missing."""
    if settings.tools_config is None:
        return None
    config = load_tools_config(settings.tools_config)
    if config.mcp_servers:
        try:
            import pilothouse.toolexecutor.mcp.hosts  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"{settings.tools_config} names MCP servers but the MCP SDK cannot be "
                f"imported ({exc}): pip install 'pilothouse[mcp]'"
            ) from None
    return config


async def start_mcp_hosts(config: ToolsConfig | None) -> McpHosts | None:
    """Connect to the config's MCP servers (an `McpHosts`), or None when it
    names none; returns once each server is up or failed its first try."""
    if config is None or not config.mcp_servers:
        return None
    from pilothouse.toolexecutor.mcp.hosts import McpHosts

    hosts = McpHosts(config)
    await hosts.start()
    return hosts


async def stop_mcp_hosts(hosts: McpHosts | None) -> None:
    """Close the MCP servers' connections (stopping the stdio servers)."""
    if hosts is not None:
        await hosts.close()


def served_tools(registry: ToolRegistry, hosts: McpHosts | None) -> ToolSource:
    """The registry's tools, then the MCP servers' ones."""
    return registry if hosts is None else ToolSources(registry, hosts)


async def serve(
    settings: ToolsSettings,
    registry: ToolRegistry = default_registry,
    config: ToolsConfig | None = None,
) -> int:
    """Serve `registry` (and the tools of `config`'s MCP servers) until
    SIGTERM/SIGINT, then drain; returns the exit code (1 if the address
    cannot be bound)."""
    listen = settings.tools_listen_address
    try:
        check_exposure(settings, listen, SERVICE_NAME)
        chain = build_chain(settings)
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    signals = StopSignals().install()
    configure_tracing(SERVICE_NAME)
    metrics = await start_metrics(
        resource_for(SERVICE_NAME),
        host=settings.tools_metrics_host,
        port=settings.tools_metrics_port,
    )
    mcp_hosts = await start_mcp_hosts(config)
    tools = served_tools(registry, mcp_hosts)
    try:
        running = await serve_tools(
            tools,
            listen,
            max_message_bytes=settings.max_message_bytes,
            keepalive=settings.keepalive,
            metrics=ToolExecutorMetrics(metrics.meter()),
            tls=settings.server_tls,
            auth=None if chain.anonymous_only else chain,
            health_address=settings.tools_health_listen_address,
        )
    except (RuntimeError, ValueError) as exc:
        log.error("cannot start on %s: %s", listen, exc)
        await stop_mcp_hosts(mcp_hosts)
        await metrics.shutdown()
        return 1
    if mcp_hosts is not None:
        await mcp_hosts.report_health(running, ["", EXECUTOR_SERVICE])
    print(f"pilothouse-tools listening on {_shown_address(listen, running.port)}", flush=True)
    log.info("serving tools: %s", ", ".join(tool.name for tool in tools))
    await signals.stop.wait()
    grace = settings.tools_shutdown_grace
    log.info("stopping: health NOT_SERVING; in-flight calls get up to %g s", grace)
    await running.enter_drain()
    stopping = asyncio.ensure_future(running.stop(grace))
    forced = asyncio.ensure_future(signals.force.wait())
    await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.warning("cancelling the calls still in flight")
        await running.stop(0)
    forced.cancel()
    await stopping
    await stop_mcp_hosts(mcp_hosts)
    await metrics.shutdown()
    provider = installed_tracer_provider()
    if provider is not None:
        provider.force_flush()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, registry: ToolRegistry | None = None) -> int:
    """Console entry point; returns the exit code. `registry` (default:
    the built-ins) lets a program serve its own tools the same way."""
    args = parse_args(argv)
    overrides = {}
    if args.listen:
        overrides["tools_listen_address"] = args.listen
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.config:
        overrides["tools_config"] = args.config
    try:
        settings = ToolsSettings(**overrides)
    except pydantic.ValidationError as exc:
        configure_logging("INFO", "text")
        log.error("bad settings: %s", exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        config = load_config(settings)
    except ConfigError as exc:
        log.error("bad config: %s", exc)
        return 2
    try:
        return eventloop.run(
            serve(settings, default_registry if registry is None else registry, config),
            settings.event_loop,
        )
    except ValueError as exc:  # the loop asked for is not installed
        log.error("bad settings: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
