"""Accumulates streamed chunks into one assistant message."""

from __future__ import annotations

from dataclasses import dataclass

from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall
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
    and name are set once, arguments are concatenated. Reasoning blocks
    that must go back to the provider as they came (see `_accept_blocks`)
    are kept beside the reasoning text.
    """

    __slots__ = ("_block_start", "_blocks", "_calls", "_content", "_reasoning")

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._blocks: list[ReasoningBlock] = []
        self._block_start = 0  # where the reasoning of the next signed block starts

    def accept(self, chunk: ChatChunk) -> None:
        if chunk.content:
            self._content.append(chunk.content)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.reasoning_signature is not None or chunk.redacted_reasoning is not None:
            self._accept_blocks(chunk)
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

    def _accept_blocks(self, chunk: ChatChunk) -> None:
        """A signature closes the reasoning streamed since the last block
        as one signed block; a redacted block is kept whole."""
        if chunk.reasoning_signature is not None:
            text = "".join(self._reasoning[self._block_start :])
            self._block_start = len(self._reasoning)
            self._blocks.append(ReasoningBlock(text=text, signature=chunk.reasoning_signature))
        if chunk.redacted_reasoning is not None:
            self._blocks.append(ReasoningBlock(redacted=chunk.redacted_reasoning))

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
            reasoning_blocks=self._blocks,
        )
