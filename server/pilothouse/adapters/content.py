"""Opt-in recording of message contents on the model spans
(`PILOTHOUSE_RECORD_CONTENT=true`).

`ContentRecordingModel` wraps the runtime's `ChatModel`. The agent loop
calls `stream()` inside its `chat {model}` span, so the wrapper sets, on
that span, the GenAI semantic conventions' `gen_ai.system_instructions`,
`gen_ai.input.messages` and `gen_ai.output.messages` (JSON in the
conventions' parts format). Other model calls (compaction, titles) are
left alone. Contents can hold personal data: off by default.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from pilothouse import jsontext
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import ChatChunk, ChatModel, ChatRequest

CHAT_SPAN_PREFIX = gen_ai.GenAiOperationNameValues.CHAT.value + " "


def _text_parts(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "content": content}] if content else []


def _arguments(raw: str | None) -> Any:
    try:
        return jsontext.loads(raw or "{}")
    except ValueError:
        return raw


def to_semconv_messages(
    messages: Sequence[Message], system: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runtime's messages (and system prompt) as (system instructions,
    input messages) in the GenAI conventions' format."""
    instructions = _text_parts(system)
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role is Role.SYSTEM:
            instructions += _text_parts(message.content)
            continue
        if role is Role.TOOL:
            parts: list[dict[str, Any]] = [
                {"type": "tool_call_response", "id": message.tool_call_id, "response": message.content}
            ]
        else:
            parts = []
            if message.reasoning_content:
                parts.append({"type": "reasoning", "content": message.reasoning_content})
            parts += _text_parts(message.content)
            for call in message.tool_calls:
                parts.append({
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": _arguments(call.arguments),
                })
        converted.append({"role": role.value, "parts": parts})
    return instructions, converted


class ContentRecordingModel:
    """A `ChatModel` that records contents on the current `chat` span."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.provider_name = inner.provider_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        span = trace.get_current_span()
        if not span.is_recording() or not getattr(span, "name", "").startswith(CHAT_SPAN_PREFIX):
            return self.inner.stream(request)
        return self._recorded(request, span)

    async def _recorded(self, request: ChatRequest, span: Any) -> AsyncIterator[ChatChunk]:
        system, messages = to_semconv_messages(request.messages, request.system)
        if system:
            span.set_attribute(gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS, json.dumps(system, ensure_ascii=False))
        span.set_attribute(gen_ai.GEN_AI_INPUT_MESSAGES, json.dumps(messages, ensure_ascii=False))
        text: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish = ""
        stream = self.inner.stream(request)
        try:
            async for chunk in stream:
                if chunk.content:
                    text.append(chunk.content)
                if chunk.reasoning:
                    reasoning.append(chunk.reasoning)
                for delta in chunk.tool_calls:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    call["name"] = delta.name or call["name"]
                    call["arguments"] += delta.arguments or ""
                finish = chunk.finish_reason or finish
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # close the HTTP response now, not at GC
                await aclose()
            parts: list[dict[str, Any]] = []
            if reasoning:
                parts.append({"type": "reasoning", "content": "".join(reasoning)})
            parts += _text_parts("".join(text))
            for index in sorted(calls):
                call = calls[index]
                parts.append({
                    "type": "tool_call",
                    "id": call["id"],
                    "name": call["name"],
                    "arguments": _arguments(call["arguments"]),
                })
            output = [{"role": "assistant", "parts": parts, "finish_reason": finish}]
            if span.is_recording():
                span.set_attribute(gen_ai.GEN_AI_OUTPUT_MESSAGES, json.dumps(output, ensure_ascii=False))

    async def aclose(self) -> None:
        await self.inner.aclose()
