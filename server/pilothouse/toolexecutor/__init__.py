"""The reference ToolExecutor: Python functions served as tools over gRPC.

`tool` is the decorator of `default_registry`, the registry that
`pilothouse-tools` serves; it already holds the safe built-ins
(`pilothouse.toolexecutor.builtins`). Build a `ToolRegistry` of your own to serve
another set.
"""

from pilothouse.toolexecutor.builtins import register_builtins
from pilothouse.toolexecutor.registry import (
    Answer,
    AskUser,
    ExecutionResult,
    RegisteredTool,
    ToolFlags,
    ToolRegistry,
    current_answer,
    default_registry,
)

register_builtins(default_registry)

#: Register a function on `default_registry`: `@tool` or `@tool(name=...,
#: description=..., metadata={...})`.
tool = default_registry.tool

__all__ = [
    "Answer",
    "AskUser",
    "ExecutionResult",
    "RegisteredTool",
    "ToolFlags",
    "ToolRegistry",
    "current_answer",
    "default_registry",
    "tool",
]
