"""History messages, tool calls and usage: the runtime's own types.

They mirror the Chat Completions wire format (seed 003 `HistoryEntry`), and
`Message.to_wire()` projects a message onto that format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """Role of a message, with the wire-format spelling."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(slots=True)
class ToolCall:
    """A function call requested by the model.

    `arguments` is the JSON text the model produced (normally an object);
    it is passed to the ToolExecutor as it is.
    """

    id: str
    name: str
    arguments: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments or "{}"},
        }


@dataclass(slots=True)
class Usage:
    """Token usage with the Chat Completions names; adds up with `+`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(slots=True)
class Message:
    """One entry of a session's history.

    `sender` and `auto_injected` are runtime metadata (seed 000): they are
    stored but never sent to the model. `created_at` is Unix time in seconds.
    """

    role: Role
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    name: str = ""
    sender: str = ""
    auto_injected: bool = False
    created_at: float = field(default_factory=time.time)

    @classmethod
    def user(cls, content: str, sender: str = "") -> Message:
        return cls(Role.USER, content, sender=sender)

    @classmethod
    def tool(cls, content: str, call_id: str, name: str) -> Message:
        return cls(Role.TOOL, content, tool_call_id=call_id, name=name)

    def copy(self) -> Message:
        """A copy sharing nothing mutable (much cheaper than deepcopy)."""
        return Message(
            self.role,
            self.content,
            self.reasoning_content,
            [ToolCall(c.id, c.name, c.arguments) for c in self.tool_calls],
            self.tool_call_id,
            self.name,
            self.sender,
            self.auto_injected,
            self.created_at,
        )

    def to_wire(self) -> dict[str, Any]:
        """The message as a Chat Completions request message."""
        wire: dict[str, Any] = {"role": self.role.value}
        if self.role is Role.ASSISTANT and self.tool_calls:
            wire["content"] = self.content or None
            wire["tool_calls"] = [tc.to_wire() for tc in self.tool_calls]
        else:
            wire["content"] = self.content
        if self.role is Role.TOOL:
            wire["tool_call_id"] = self.tool_call_id
        return wire
