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
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from pilothouse import jsontext
from pilothouse.runtime.model.base import ChatChunk, ChatModel, ChatRequest

CHAT_SPAN_PREFIX = gen_ai.GenAiOperationNameValues.CHAT.value + " "


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    for item in content:  # OpenAI content parts
        if isinstance(item, dict) and item.get("type") == "text":
            parts.append({"type": "text", "content": item.get("text", "")})
        else:
            parts.append({"type": str(item.get("type", "unknown")) if isinstance(item, dict) else "unknown"})
    return parts


def _arguments(raw: str | None) -> Any:
    try:
        return jsontext.loads(raw or "{}")
    except ValueError:
        return raw


def to_semconv_messages(messages: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """OpenAI Chat Completions messages as (system instructions, input
    messages) in the GenAI conventions' format."""
    system: list[dict[str, Any]] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role", "")
        if role in {"system", "developer"}:
            system += _text_parts(message.get("content"))
            continue
        if role == "tool":
            parts = [{
                "type": "tool_call_response",
                "id": message.get("tool_call_id", ""),
                "response": message.get("content", ""),
            }]
        else:
            parts = _text_parts(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                parts.append({
                    "type": "tool_call",
                    "id": call.get("id", ""),
                    "name": function.get("name", ""),
                    "arguments": _arguments(function.get("arguments")),
                })
        converted.append({"role": role, "parts": parts})
    return system, converted


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
        system, messages = to_semconv_messages(request.messages)
        if system:
            span.set_attribute(gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS, json.dumps(system, ensure_ascii=False))
        span.set_attribute(gen_ai.GEN_AI_INPUT_MESSAGES, json.dumps(messages, ensure_ascii=False))
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish = ""
        stream = self.inner.stream(request)
        try:
            async for chunk in stream:
                if chunk.content:
                    text.append(chunk.content)
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
            parts: list[dict[str, Any]] = _text_parts("".join(text))
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
