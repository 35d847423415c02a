"""The agents file's agents, registered at start-up even while a
ToolExecutor they need is absent: when an executor did not answer, an
agent naming tools that no executor has offered yet waits (logged once)
and is registered as soon as the tool catalog has them. When every
executor answered, such an agent is a mistake in the file and start-up
fails, as before.

While the server runs the file is watched (`watch`, with watchfiles: its
directory, so that editors' atomic renames and Kubernetes ConfigMap
symlink swaps are seen): each time its content changes, a changed agent
becomes a new version, a new one is registered, and an agent no longer in
the file is marked removed (new runs and sessions fail with
FAILED_PRECONDITION AGENT_REMOVED; runs already started finish). A file
that does not parse, or is missing, changes nothing (logged)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import watchfiles

from pilothouse.app.agents_file import read_agents_file
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
        #: The names the file had when last read.
        self.names: set[str] = set()
        #: How many changes of the file were applied (for tests and logs).
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._text: str | None = None
        catalog.on_change(self._retry_soon)

    async def register(self, configs: list[AgentConfig]) -> None:
        """Register every config (replacing older versions); raises for
        anything but tools that are not available yet."""
        for config in configs:
            await self._try(config)
        self.names = {config.name for config in configs}

    def watch(self, path: Path) -> None:
        """Apply the changes of the agents file at `path` from now on."""
        with contextlib.suppress(OSError):
            self._text = path.read_text()
        # Not resolved: a ConfigMap's file is a symlink into a directory
        # that the next update deletes (it swaps the `..data` symlink here).
        directory = path.absolute().parent
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(path, directory), name="agents-file-watch"
        )

    async def _watch(self, path: Path, directory: Path) -> None:
        log.info("watching the agents file %s", path)
        name = path.name

        def concerns(_: watchfiles.Change, changed: str) -> bool:
            # The file itself (written in place or renamed onto), or the
            # `..data` symlink a ConfigMap swaps; not the store or logs
            # that may share the directory.
            return Path(changed).name in (name, "..data")

        async for _ in watchfiles.awatch(directory, stop_event=self._stop, recursive=False,
                                         watch_filter=concerns):
            try:
                await self.reload(path)
            except Exception:  # a bug: the watch keeps going
                log.exception("agents file %s: the change could not be applied", path)

    async def reload(self, path: Path) -> bool:
        """Apply the file's content if it changed since it was last read;
        whether it did. A file that cannot be read or parsed is logged and
        changes nothing."""
        try:
            text = await asyncio.to_thread(path.read_text)
        except OSError as exc:
            log.warning("agents file %s: cannot be read (%s); agents unchanged", path, exc)
            return False
        if text == self._text:
            return False
        try:
            configs = read_agents_file(path, text=text)
        except PilothouseError as exc:
            log.error("agents file %s: %s; agents unchanged", path, exc.message)
            return False
        self._text = text
        for config in configs:
            try:
                await self._try(config)
            except PilothouseError as exc:
                log.error("agents file %s: agent %s: %s", path, config.name, exc.message)
        names = {config.name for config in configs}
        for name in sorted(self.names - names):
            self.pending.pop(name, None)
            if await self.runtime.agents.set_removed(name, True):
                log.warning("agent %s left the agents file: it takes no new runs", name)
        self.names = names
        self.reloads += 1
        log.info("agents file %s applied: %d agents", path, len(configs))
        return True

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
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
