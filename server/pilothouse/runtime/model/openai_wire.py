"""The OpenAI Chat Completions wire format: the request body built from the
runtime's types, and the streamed answer decoded into `ChatChunk`s.

It speaks the protocol as OpenAI, Azure OpenAI, DeepSeek, Groq, OpenRouter,
Ollama, llama.cpp and vLLM actually send it: tool-call fragments keyed by
`index` (or by call id when a server leaves the index out), reasoning as
`reasoning_content` or `reasoning`, usage in a trailing empty-choices chunk
or on the finish chunk (or beside an error), errors as an `error` object or
an `event: error` inside a 200 stream, and a whole JSON completion from a
server that ignores `stream: true`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx

from pilothouse import jsontext
from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.model.base import (
    ChatChunk,
    ChatRequest,
    FailureCause,
    ModelError,
    ReasoningEffort,
    ToolCallDelta,
)
from pilothouse.runtime.model.body import Body
from pilothouse.runtime.model.errors import clip, describe_error_body
from pilothouse.runtime.model.sse import EventStream, is_event_stream
from pilothouse.runtime.tools import ToolSpec

log = logging.getLogger(__name__)

_TOOL_CHOICE_KEYWORDS = frozenset({"auto", "none", "required"})


# --- the request ---------------------------------------------------------------------------


def tool_call_to_wire(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


def message_to_wire(message: Message, *, send_reasoning: bool = True) -> dict[str, Any]:
    """A history message as a Chat Completions request message.

    An assistant message that made tool calls carries its reasoning back as
    `reasoning_content` when it has some and `send_reasoning` is set:
    DeepSeek's thinking mode refuses the next request without it (and
    servers that do not know the field ignore it)."""
    role = message.role
    if role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if role is Role.ASSISTANT and message.tool_calls:
        wire: dict[str, Any] = {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [tool_call_to_wire(c) for c in message.tool_calls],
        }
        if send_reasoning and message.reasoning_content:
            wire["reasoning_content"] = message.reasoning_content
        return wire
    return {"role": role.value, "content": message.content}


def tool_to_wire(spec: ToolSpec) -> dict[str, Any]:
    """A tool as a Chat Completions `tools[]` entry (an empty description
    is left out)."""
    function: dict[str, Any] = {"name": spec.name}
    if spec.description:
        function["description"] = spec.description
    function["parameters"] = spec.parameters
    return {"type": "function", "function": function}


def build_request_body(
    request: ChatRequest,
    *,
    send_reasoning: bool = True,
    max_tokens_field: str = "max_tokens",
) -> dict[str, Any]:
    """The JSON body of a streamed Chat Completions request.

    The system prompt goes first as a `system` message. `tools` is sent
    only when non-empty, with `tool_choice` ("auto", "none" and "required"
    as strings, any other string naming a function) and
    `parallel_tool_calls` when set. Model settings map to `temperature`,
    `top_p`, `stop`, `reasoning_effort` (left out for "" and "none") and
    the max-tokens field the server understands (`max_tokens`, or
    `max_completion_tokens` for OpenAI's own API); structured output to
    `response_format` of type `json_schema` (`name`, `schema`, `strict`)."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(message_to_wire(m, send_reasoning=send_reasoning) for m in request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    settings = request.settings
    if request.tools:
        body["tools"] = [tool_to_wire(t) for t in request.tools]
        choice = request.tool_choice
        if choice is not None:
            if choice in _TOOL_CHOICE_KEYWORDS:
                body["tool_choice"] = choice
            else:
                body["tool_choice"] = {"type": "function", "function": {"name": choice}}
        if settings.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = settings.parallel_tool_calls
    if settings.reasoning_effort not in (ReasoningEffort.DEFAULT, ReasoningEffort.NONE):
        body["reasoning_effort"] = settings.reasoning_effort.value
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.top_p is not None:
        body["top_p"] = settings.top_p
    if settings.max_tokens:
        body[max_tokens_field] = settings.max_tokens
    if settings.stop:
        body["stop"] = list(settings.stop)
    answer = request.response_format
    if answer is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": answer.name, "schema": answer.schema, "strict": answer.strict},
        }
    return body


# --- the answer ----------------------------------------------------------------------------


def parse_usage(raw: Any) -> Usage | None:
    """A `Usage` from a Chat Completions `usage` object (None when absent).

    Cached prompt tokens come from `prompt_tokens_details.cached_tokens` or
    DeepSeek's `prompt_cache_hit_tokens`; reasoning tokens from
    `completion_tokens_details.reasoning_tokens`. A missing `total_tokens`
    is the sum of prompt and completion tokens.
    """
    if not isinstance(raw, dict) or not raw:
        return None
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        _count(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0
    )
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(raw.get("total_tokens")) or prompt + completion,
        cached_tokens=max(cached, _count(raw.get("prompt_cache_hit_tokens"))),
        reasoning_tokens=reasoning,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    """Delta text: a string, or the text parts of a content-parts list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text") or ""
            for part in value
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(slots=True)
class _StreamState:
    """What one stream has shown so far."""

    finish_reason: str | None = None
    done: bool = False
    model: str | None = None
    # Servers that leave out a tool call's `index` are keyed by the call id.
    ids: dict[str, int] = field(default_factory=dict)
    last_index: int | None = None
    max_index: int = -1

    def tool_index(self, index: Any, call_id: str | None, position: int) -> int:
        if isinstance(index, int) and not isinstance(index, bool):
            resolved = index
        elif call_id and call_id in self.ids:
            resolved = self.ids[call_id]
        elif call_id:
            resolved = self.max_index + 1
        elif self.last_index is not None:
            resolved = self.last_index
        else:
            resolved = position
        if call_id:
            self.ids.setdefault(call_id, resolved)
        self.last_index = resolved
        self.max_index = max(self.max_index, resolved)
        return resolved


async def decode_stream(body: Body) -> AsyncGenerator[ChatChunk, None]:
    """The chunks of a 2xx Chat Completions body (see `OpenAIChatModel.stream`)."""
    media = body.content_type.partition(";")[0].strip().lower()
    if media.endswith("json"):
        # The server ignored `stream: true` and answered in one piece.
        yield await _decode_completion(body)
        return
    provider = body.provider
    if not is_event_stream(body.content_type):
        text = await body.text()
        raise ModelError(
            f"{provider} did not answer with an event stream "
            f"(Content-Type {body.content_type!r}): {clip(' '.join(text.split()))}",
            status_code=body.response.status_code,
            cause=FailureCause.BAD_RESPONSE,
        )
    state = _StreamState()
    try:
        async for batch in EventStream(body, body.event_idle_s):
            for event, data in batch:
                if event == "error":
                    raise stream_error(provider, data)
                data = data.strip()
                if not data:
                    continue
                if data == "[DONE]":
                    state.done = body.finished = True
                    break
                chunk = _parse_chunk(_decode(provider, data), state)
                if chunk is not None:
                    yield chunk
            if state.done:
                return
    except httpx.HTTPError:
        if state.finish_reason is None:
            raise
        # The answer is complete; only the trailer (usage, [DONE]) is lost.
        log.warning(
            "%s: connection lost after finish_reason %r; keeping the answer",
            provider,
            state.finish_reason,
        )
        return
    if state.finish_reason is None:
        raise ModelError(
            "model stream ended before completion: "
            f"{provider} closed the stream without a finish_reason or [DONE]",
            retryable=True,
            cause=FailureCause.INCOMPLETE,
        )


def _decode(provider: str, data: str) -> dict[str, Any]:
    try:
        payload = jsontext.loads(data, exact_integers=False)  # numbers: counts and times
    except ValueError as exc:
        raise ModelError(f"{provider} sent a malformed stream chunk: {clip(data)!r}") from exc
    if not isinstance(payload, dict):
        raise ModelError(f"{provider} sent a malformed stream chunk: {clip(data)!r}")
    if payload.get("error"):
        raise stream_error(provider, payload, usage=parse_usage(payload.get("usage")))
    return payload


def _parse_chunk(payload: dict[str, Any], state: _StreamState) -> ChatChunk | None:
    # Runs once per streamed chunk: absent keys are skipped before any
    # conversion, and no chunk object is made for a chunk that carries
    # nothing.
    model = payload.get("model")
    if isinstance(model, str) and model:
        state.model = model
    raw_usage = payload.get("usage")
    usage = parse_usage(raw_usage) if raw_usage else None
    content = reasoning = refusal = ""
    tool_calls: list[ToolCallDelta] = []
    finish_reason: str | None = None
    for choice in payload.get("choices") or ():
        # We ask for one choice; index 0 is the only one to read.
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if text:
                content += text if isinstance(text, str) else _text(text)
            text = delta.get("refusal")
            if text:
                text = text if isinstance(text, str) else _text(text)
                content += text
                refusal += text
            text = delta.get("reasoning_content")
            thought = _text(text) if text else ""
            if not thought:
                text = delta.get("reasoning")
                thought = _text(text) if text else ""
            reasoning += thought
            calls = delta.get("tool_calls")
            if calls:
                tool_calls.extend(_tool_deltas(calls, state))
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            finish_reason = state.finish_reason = finish
    if not content and not reasoning and not tool_calls and finish_reason is None and usage is None:
        return None
    return ChatChunk(
        content=content or None,
        reasoning=reasoning or None,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        usage=usage,
        model=state.model,
        refusal=refusal or None,
    )


def _tool_deltas(raw: Any, state: _StreamState) -> list[ToolCallDelta]:
    deltas: list[ToolCallDelta] = []
    if not isinstance(raw, list):
        return deltas
    for position, call in enumerate(raw):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        name = function.get("name") if isinstance(function.get("name"), str) else None
        arguments = function.get("arguments")
        if isinstance(arguments, (dict, list)):
            # Some servers send the arguments as a JSON value, not text.
            arguments = json.dumps(arguments)
        elif not isinstance(arguments, str):
            arguments = None
        index = state.tool_index(call.get("index"), call_id, position)
        if call_id or name or arguments:
            deltas.append(ToolCallDelta(index, call_id, name or None, arguments or None))
    return deltas


async def _decode_completion(body: Body) -> ChatChunk:
    provider = body.provider
    raw = await body.text()
    try:
        completion = json.loads(raw)
    except ValueError as exc:
        raise ModelError(
            f"{provider} sent malformed JSON: {clip(raw)}",
            status_code=body.response.status_code,
        ) from exc
    if not isinstance(completion, dict) or completion.get("error"):
        usage = parse_usage(completion.get("usage")) if isinstance(completion, dict) else None
        raise stream_error(provider, completion, usage=usage)
    choices = [c for c in completion.get("choices") or [] if isinstance(c, dict)]
    choice = next((c for c in choices if c.get("index", 0) == 0), {})
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    delta = {
        "content": message.get("content"),
        "refusal": message.get("refusal"),
        "reasoning_content": message.get("reasoning_content"),
        "reasoning": message.get("reasoning"),
        "tool_calls": [
            {**call, "index": call.get("index", i)}
            for i, call in enumerate(message.get("tool_calls") or [])
            if isinstance(call, dict)
        ],
    }
    payload = {
        "model": completion.get("model"),
        "usage": completion.get("usage"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
    }
    state = _StreamState()
    chunk = _parse_chunk(payload, state)
    if chunk is None or state.finish_reason is None:
        raise ModelError(
            f"model stream ended before completion: {provider} sent a "
            "completion without a finish_reason",
            retryable=True,
            cause=FailureCause.INCOMPLETE,
        )
    body.finished = True
    return chunk


def stream_error(provider: str, raw: Any, usage: Usage | None = None) -> ModelError:
    """The `ModelError` for an `error` object (or `event: error` data)
    inside a 200 response; `usage` is what the same chunk reported."""
    if isinstance(raw, str):
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        text = raw
    else:
        body, text = raw, json.dumps(raw)
    message, code = describe_error_body(body, text)
    error = body.get("error") if isinstance(body, dict) else None
    stated = error.get("status_code") if isinstance(error, dict) else None
    if not isinstance(stated, int) or isinstance(stated, bool):
        stated = error.get("code") if isinstance(error, dict) else None
    status = stated if isinstance(stated, int) and 100 <= stated <= 599 else None
    kind = f"{code or ''} {error.get('type') if isinstance(error, dict) else ''}".lower()
    retryable = (status is not None and (status == 429 or status >= 500)) or (
        status is None
        and any(k in kind for k in ("server_error", "overloaded", "rate_limit", "api_error"))
    )
    suffix = f" (code {code})" if code else ""
    return ModelError(
        f"{provider} reported an error in the stream: {message or 'no message'}{suffix}",
        status_code=status,
        code=code,
        retryable=retryable,
        cause=FailureCause.ERROR_EVENT,
        usage=usage,
    )
