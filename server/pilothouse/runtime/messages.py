"""History messages, tool calls and usage: the runtime's own types.

They are provider-neutral: each model provider projects them onto its own
wire format (`runtime/model/openai_wire.py`, `runtime/model/anthropic_wire.py`).
Field names follow the Chat Completions ones where a name is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


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


@dataclass(slots=True)
class Usage:
    """Token usage with the Chat Completions names; adds up with `+`.

    `prompt_tokens` counts every input token, cached or not;
    `cached_tokens` are those read from the provider's prompt cache and
    `cache_write_tokens` those written to it (Anthropic's
    `cache_creation_input_tokens`); `reasoning_tokens` are part of
    `completion_tokens`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


@dataclass(slots=True)
class ReasoningBlock:
    """One block of a model's reasoning, kept so that it can be sent back
    to the provider that made it, which may require it verbatim: signed
    thinking (`text` with its `signature`, Anthropic's extended thinking)
    or redacted thinking (`redacted`, the provider's opaque data, no text).
    """

    text: str = ""
    signature: str = ""
    redacted: str = ""


@dataclass(slots=True)
class Message:
    """One entry of a session's history.

    `sender` and `auto_injected` are runtime metadata: they are stored but
    never sent to the model. `created_at` is Unix time in seconds.
    `reasoning_content` is the reasoning text of an assistant message (what
    clients see); `reasoning_blocks` is the same reasoning as the provider
    delivered it when it must be sent back signed or redacted (empty for
    providers that have no such blocks).
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
    reasoning_blocks: list[ReasoningBlock] = field(default_factory=list)

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
            [ReasoningBlock(b.text, b.signature, b.redacted) for b in self.reasoning_blocks]
            if self.reasoning_blocks
            else [],
        )
