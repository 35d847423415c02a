"""Accumulates streamed chunks into one assistant message (seed 003
`MessageBuilder`)."""

from __future__ import annotations

from dataclasses import dataclass

from pilothouse.runtime.messages import Message, Role, ToolCall
from pilothouse.runtime.model.base import ChatChunk


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class MessageBuilder:
    """Collects text, reasoning and tool-call fragments of one model round.

    Tool-call fragments are assembled by `index`. A fragment that repeats a
    whole call (some servers resend id and name) does not duplicate it: id
    and name are set once, arguments are concatenated.
    """

    __slots__ = ("_calls", "_content", "_reasoning")

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _PartialCall] = {}

    def accept(self, chunk: ChatChunk) -> None:
        if chunk.content:
            self._content.append(chunk.content)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        for delta in chunk.tool_calls:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = _PartialCall()
            if delta.id and not call.id:
                call.id = delta.id
            if delta.name and not call.name:
                call.name = delta.name
            if delta.arguments:
                call.arguments += delta.arguments

    def peek_tool_calls(self) -> list[ToolCall]:
        """Calls whose name is known so far, arguments possibly partial."""
        return [
            ToolCall(c.id, c.name, c.arguments)
            for _, c in sorted(self._calls.items())
            if c.name
        ]

    def build(self) -> Message:
        """The assistant message; tool calls without a name are dropped and
        calls without an id get one derived from their index."""
        calls = [
            ToolCall(c.id or f"call_{index}", c.name, c.arguments)
            for index, c in sorted(self._calls.items())
            if c.name
        ]
        return Message(
            Role.ASSISTANT,
            "".join(self._content),
            reasoning_content="".join(self._reasoning),
            tool_calls=calls,
        )
