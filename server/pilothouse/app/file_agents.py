"""The agents file's agents, registered at start-up even while a
ToolExecutor they need is absent: when an executor did not answer, an
agent naming tools that no executor has offered yet waits (logged once)
and is registered as soon as the tool catalog has them. When every
executor answered, such an agent is a mistake in the file and start-up
fails, as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pilothouse.errors import FailedPreconditionError, PilothouseError
from pilothouse.runtime.agent import AgentConfig
from pilothouse.runtime.runtime import Runtime
from pilothouse.runtime.tools import ToolCatalog

log = logging.getLogger(__name__)


class FileAgents:
    """Registers configs from the agents file into `runtime`; with
    `wait_for_tools`, those naming tools not offered yet wait and are
    retried whenever `catalog` changes."""

    def __init__(self, runtime: Runtime, catalog: ToolCatalog, *, wait_for_tools: bool) -> None:
        self.runtime = runtime
        self.wait_for_tools = wait_for_tools
        #: Agents waiting for tools, by name.
        self.pending: dict[str, AgentConfig] = {}
        self._task: asyncio.Task[None] | None = None
        catalog.on_change(self._retry_soon)

    async def register(self, configs: list[AgentConfig]) -> None:
        """Register every config (replacing older versions); raises for
        anything but tools that are not available yet."""
        for config in configs:
            await self._try(config)

    async def _try(self, config: AgentConfig) -> bool:
        try:
            await self.runtime.add_agent(config, source="file", replace=True)
        except FailedPreconditionError as exc:
            if exc.reason != "TOOL_NOT_AVAILABLE" or not self.wait_for_tools:
                raise
            if config.name not in self.pending:
                log.warning(
                    "agent %s from the agents file waits for tools no ToolExecutor offers yet "
                    "(%s); it is registered once one does",
                    config.name, exc.metadata.get("tools", ""),
                )
            self.pending[config.name] = config
            return False
        if self.pending.pop(config.name, None) is not None:
            log.info("agent %s from the agents file registered: its tools are available", config.name)
        return True

    def _retry_soon(self) -> None:
        if self.pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="file-agents")

    async def _retry(self) -> None:
        for config in list(self.pending.values()):
            try:
                await self._try(config)
            except PilothouseError as exc:
                log.warning("agent %s from the agents file: %s", config.name, exc.message)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
