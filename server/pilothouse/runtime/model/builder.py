"""Accumulates streamed chunks into one assistant message."""

from __future__ import annotations

from dataclasses import dataclass

from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall
from pilothouse.runtime.model.base import ChatChunk

#: Longest tool-call id kept as the model sent it, bytes; a longer one is
#: replaced (the id only pairs a call with its result).
MAX_CALL_ID_BYTES = 128


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
        """The assistant message. Every call is kept, a call without a name
        too (the agent loop answers it with an error result, so that the
        model learns of it). Call ids are unique within the message: a
        call without an id, with an id an earlier call of the round has, or
        with one over MAX_CALL_ID_BYTES gets one derived from its index."""
        calls: list[ToolCall] = []
        taken: set[str] = set()
        for index, c in sorted(self._calls.items()):
            call_id = c.id
            if not call_id or call_id in taken or len(call_id.encode()) > MAX_CALL_ID_BYTES:
                base = f"{c.id}_{index}" if c.id and len(c.id) <= 64 else f"call_{index}"
                call_id, n = base, 1
                while call_id in taken:
                    n += 1
                    call_id = f"{base}_{n}"
            taken.add(call_id)
            calls.append(ToolCall(call_id, c.name, c.arguments))
        return Message(
            Role.ASSISTANT,
            "".join(self._content),
            reasoning_content="".join(self._reasoning),
            tool_calls=calls,
            reasoning_blocks=self._blocks,
        )
