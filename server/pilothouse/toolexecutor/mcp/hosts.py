"""Every configured MCP server of a ToolExecutor, as one `ToolSource`,
with its status in grpc.health.v1 as `mcp/<name>`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol

from pilothouse.toolexecutor.mcp.config import ToolsConfig
from pilothouse.toolexecutor.mcp.connection import McpServerHost, McpTool

__all__ = ["HealthReporter", "McpHosts"]


class HealthReporter(Protocol):
    """Where statuses go: `RunningServer.set_serving`."""

    async def set_serving(self, service: str, serving: bool) -> None: ...


class McpHosts:
    """Every MCP server of a config, as one `ToolSource`: tools in config
    order, then each server's order."""

    def __init__(self, config: ToolsConfig) -> None:
        self.config = config
        self.hosts = [McpServerHost(server) for server in config.mcp_servers]
        self._health: HealthReporter | None = None
        self._services: list[str] = []
        for host in self.hosts:
            host.on_status(self._report)

    async def start(self) -> None:
        """Connect to every server; return once each has connected or failed
        its first attempt (at most its `connect_timeout`, plus the time a
        stdio server takes to start)."""
        for host in self.hosts:
            host.start()
        await asyncio.gather(*(host.wait_first_attempt() for host in self.hosts))

    async def close(self) -> None:
        """Close every connection (stopping the stdio servers)."""
        await asyncio.gather(*(host.close() for host in self.hosts))

    def host(self, name: str) -> McpServerHost | None:
        return next((h for h in self.hosts if h.name == name), None)

    def get(self, name: str) -> McpTool | None:
        for host in self.hosts:
            for tool in host.tools:
                if tool.name == name:
                    return tool
        return None

    def __iter__(self) -> Iterator[McpTool]:
        for host in self.hosts:
            yield from host.tools

    @property
    def serving(self) -> bool:
        """False while a `required` server is down."""
        return all(h.up for h in self.hosts if h.config.required)

    async def report_health(self, health: HealthReporter, services: list[str]) -> None:
        """Report each server's status as `mcp/<name>` on `health` from now
        on; `services` (the executor's own, and "") follow `serving`."""
        self._health = health
        self._services = services
        await self._report()

    async def _report(self) -> None:
        health = self._health
        if health is None:
            return
        for host in self.hosts:
            await health.set_serving(host.config.health_service, host.up)
        if any(h.config.required for h in self.hosts):
            for service in self._services:
                await health.set_serving(service, self.serving)
