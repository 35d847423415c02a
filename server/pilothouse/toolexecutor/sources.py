"""What the ToolExecutor service serves: tools from one or more sources.

A `ToolSource` is anything that lists tools and finds one by name: a
`ToolRegistry` of Python functions, or the tools of the configured MCP
servers (`pilothouse.toolexecutor.mcp.McpHosts`). `ToolSources` serves
several as one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from pilothouse.toolexecutor.registry import Answer, ExecutionResult, ToolFlags

__all__ = ["ServedTool", "ToolSource", "ToolSources"]

log = logging.getLogger(__name__)


class ServedTool(Protocol):
    """One tool as ListTools shows it and ExecuteTool runs it."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def parameters_schema(self) -> dict[str, Any]: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...
    @property
    def flags(self) -> ToolFlags: ...

    async def run(
        self, arguments_json: str, answer: Answer | None = None, *, timeout: float | None = None
    ) -> ExecutionResult:
        """Run one call; never raises for a failing tool (the result says
        so) but for cancellation, and TimeoutError once `timeout` seconds
        (the call's deadline) have passed."""
        ...


class ToolSource(Protocol):
    """Tools by name, listed in a stable order."""

    def get(self, name: str) -> ServedTool | None: ...
    def __iter__(self) -> Iterator[ServedTool]: ...


class ToolSources:
    """Several sources served as one, in order: a name offered by two is
    served by the first (logged once per name)."""

    def __init__(self, *sources: ToolSource) -> None:
        self._sources = sources
        self._shadowed: set[str] = set()

    def get(self, name: str) -> ServedTool | None:
        for source in self._sources:
            tool = source.get(name)
            if tool is not None:
                return tool
        return None

    def __iter__(self) -> Iterator[ServedTool]:
        seen: set[str] = set()
        for source in self._sources:
            for tool in source:
                if tool.name in seen:
                    if tool.name not in self._shadowed:
                        self._shadowed.add(tool.name)
                        log.warning("two tools are named %s; serving the first", tool.name)
                    continue
                seen.add(tool.name)
                yield tool
