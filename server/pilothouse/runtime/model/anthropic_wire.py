"""The Anthropic Messages wire format: the request body built from the
runtime's types, and the streamed answer decoded into `ChatChunk`s.

Request: the system prompt as `system`; history as alternating `user` /
`assistant` turns of content blocks (tool results are `tool_result` blocks
of a user turn, first in it; consecutive turns of one role are merged);
an assistant's signed and redacted thinking blocks sent back as they came,
before its text and `tool_use` blocks; tools with `input_schema`;
`tool_choice` as `auto` / `none` / `any` / `tool`; model settings as
`temperature`, `top_p`, `stop_sequences`, `max_tokens` (required by the
API: 4096 by default, plus the thinking budget) and extended thinking with
a budget taken from the reasoning effort.

Structured output (`ChatRequest.response_format`) is asked for with a
forced tool: a tool named `structured_output` whose `input_schema` is the
schema, with `tool_choice` forcing it (`tool` when the agent has no tools
of its own, `any` when it has, so it can still call them first; `auto`
with extended thinking, which refuses forced tool use, and a system line
asking for the tool instead). The model's call to that tool is not a tool
call: its input streams as the answer's text and its `tool_use` stop is
the answer's end (`stop`). This works on every Claude model, unlike the
newer structured-outputs beta.

Stream: `message_start` (model, input and cache usage), content blocks
(`text` / `text_delta`, `thinking` / `thinking_delta` / `signature_delta`,
`redacted_thinking` whole in its start, `tool_use` / `input_json_delta`;
server-tool blocks are the provider's own and skipped), `message_delta`
(stop reason, output usage), `message_stop`, `ping`, and `error` events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from pilothouse import jsontext
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model.base import (
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_PAUSE,
    FINISH_REFUSAL,
    FINISH_STOP,
    FINISH_TOOL_CALLS,
    STRUCTURED_OUTPUT_TOOL,
    ChatChunk,
    ChatRequest,
    FailureCause,
    ModelError,
    ReasoningEffort,
    ResponseFormat,
    ToolCallDelta,
)
from pilothouse.runtime.model.body import Body
from pilothouse.runtime.model.errors import clip, describe_error_body
from pilothouse.runtime.model.sse import EventStream, is_event_stream
from pilothouse.runtime.tools import ToolSpec

log = logging.getLogger(__name__)

#: Events that only keep the connection alive: not progress for the idle timeout.
_KEEPALIVE = frozenset({"ping"})

#: `anthropic-version` header value.
ANTHROPIC_VERSION = "2023-06-01"
#: `max_tokens` when the agent sets none (the API requires one), on top of
#: the thinking budget when thinking is on.
DEFAULT_MAX_TOKENS = 4096
#: Extended-thinking budget per reasoning effort, in tokens (1024 is the
#: API's minimum).
THINKING_BUDGETS = {
    ReasoningEffort.LOW: 1024,
    ReasoningEffort.MEDIUM: 4096,
    ReasoningEffort.HIGH: 16384,
}
MIN_THINKING_BUDGET = 1024

#: Anthropic stop reasons → the runtime's finish reasons.
FINISH_REASONS = {
    "end_turn": FINISH_STOP,
    "stop_sequence": FINISH_STOP,
    "max_tokens": FINISH_LENGTH,
    "model_context_window_exceeded": FINISH_LENGTH,
    "tool_use": FINISH_TOOL_CALLS,
    "refusal": FINISH_REFUSAL,
    "pause_turn": FINISH_PAUSE,
}
#: Error types → the HTTP status each stands for (errors inside a stream).
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# --- the request ---------------------------------------------------------------------------


def tool_to_wire(spec: ToolSpec) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": spec.name, "input_schema": spec.parameters}
    if spec.description:
        wire["description"] = spec.description
    return wire


def _tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the object `tool_use.input` must be
    (arguments that are not a JSON object become `{}`)."""
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in message.reasoning_blocks:
        if block.redacted:
            blocks.append({"type": "redacted_thinking", "data": block.redacted})
        elif block.signature:
            blocks.append(
                {"type": "thinking", "thinking": block.text, "signature": block.signature}
            )
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call.arguments)}
        )
    return blocks


def messages_to_wire(messages: Sequence[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """`(system texts, messages)`: SYSTEM messages become system text; the
    rest become turns of content blocks, consecutive turns of the same role
    merged into one (the API wants them alternating)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role is Role.SYSTEM:
            if message.content:
                system.append(message.content)
            continue
        if role is Role.ASSISTANT:
            wire_role, blocks = "assistant", _assistant_blocks(message)
        elif role is Role.TOOL:
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            if message.content:
                result["content"] = message.content
            wire_role, blocks = "user", [result]
        else:
            wire_role = "user"
            blocks = [{"type": "text", "text": message.content}] if message.content else []
        if not blocks:
            continue
        if turns and turns[-1]["role"] == wire_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": wire_role, "content": blocks})
    return system, turns


def _mid_tool_loop_without_thinking(messages: Sequence[Message]) -> bool:
    """Whether the request continues a tool loop whose assistant message
    carries no thinking block to send back: with thinking on, the API
    refuses that (the last assistant turn must start with one), so such a
    round is sent without thinking."""
    for message in reversed(messages):
        if message.role is Role.TOOL:
            continue
        if message.role is Role.ASSISTANT and message.tool_calls:
            return not any(b.signature or b.redacted for b in message.reasoning_blocks)
        return False
    return False


def build_request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a streamed Messages request (see the module docstring)."""
    system, turns = messages_to_wire(request.messages)
    if request.system:
        system.insert(0, request.system)
    settings = request.settings
    budget = THINKING_BUDGETS.get(settings.reasoning_effort)
    if budget is not None and _mid_tool_loop_without_thinking(request.messages):
        budget = None
    if settings.max_tokens:
        max_tokens = settings.max_tokens
        if budget is not None:
            budget = min(budget, max_tokens - 1)
            if budget < MIN_THINKING_BUDGET:
                budget = None  # too few tokens to think within
    else:
        max_tokens = DEFAULT_MAX_TOKENS + (budget or 0)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": max_tokens,
        "messages": turns,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.tools:
        body["tools"] = [tool_to_wire(t) for t in request.tools]
        choice = _tool_choice(request.tool_choice, settings.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    if request.response_format is not None:
        _answer_with_tool(body, request, request.response_format, thinking=budget is not None)
        if budget is not None:
            body["system"] = "\n\n".join([*system, _ANSWER_TOOL_HINT])
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.top_p is not None:
        body["top_p"] = settings.top_p
    if settings.stop:
        body["stop_sequences"] = list(settings.stop)
    return body


_ANSWER_TOOL_HINT = (
    f"Give your final answer by calling the {STRUCTURED_OUTPUT_TOOL} tool; its input is the answer."
)


def _answer_with_tool(
    body: dict[str, Any], request: ChatRequest, answer: ResponseFormat, *, thinking: bool
) -> None:
    """Add the structured-output tool and the `tool_choice` that makes the
    model answer with it (see the module docstring)."""
    own = body.get("tools", []) if request.tool_choice != "none" else []
    tool = {
        "name": STRUCTURED_OUTPUT_TOOL,
        "description": "Give your final answer with this tool: its input is the answer, "
        "matching the required JSON Schema.",
        "input_schema": answer.schema,
    }
    body["tools"] = [*own, tool]
    if thinking:
        body["tool_choice"] = {"type": "auto"}
    elif own and request.tool_choice in (None, "auto", "required"):
        body["tool_choice"] = {"type": "any"}
    else:
        body["tool_choice"] = {"type": "tool", "name": STRUCTURED_OUTPUT_TOOL}
    if request.settings.parallel_tool_calls is False:
        body["tool_choice"]["disable_parallel_tool_use"] = True


def _tool_choice(choice: str | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice in (None, "auto"):
        wire: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        wire = {"type": "any"}
    else:
        wire = {"type": "tool", "name": choice}
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    return wire


# --- the answer ----------------------------------------------------------------------------


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class _Block:
    """A content block being streamed."""

    kind: str
    call: bool = False  # a tool_use block: its deltas are tool-call fragments
    answer: bool = False  # the structured-output tool: its input is the answer's text
    arguments_seen: bool = False
    start_input: Any = None
    signature: str = ""


@dataclass(slots=True)
class _StreamState:
    model: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    blocks: dict[int, _Block] = field(default_factory=dict)
    finish_reason: str | None = None
    #: The structured-output tool's name when the request asked for it.
    answer_tool: str | None = None
    calls: int = 0  # tool_use blocks that are real tool calls

    def add_usage(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                    "cache_creation_input_tokens"):  # fmt: skip
            value = _count(raw.get(key))
            if value is not None:
                self.counts[key] = value
        details = raw.get("output_tokens_details")
        if isinstance(details, dict):
            thinking = _count(details.get("thinking_tokens"))
            if thinking is not None:
                self.counts["thinking_tokens"] = thinking

    def usage(self) -> Usage | None:
        return usage_from_counts(self.counts) if self.counts else None


def usage_from_counts(counts: dict[str, int]) -> Usage:
    """A `Usage` from Anthropic's counters: `input_tokens` leaves out the
    cached ones, so the prompt is the sum of the three input counters."""
    read = counts.get("cache_read_input_tokens", 0)
    write = counts.get("cache_creation_input_tokens", 0)
    prompt = counts.get("input_tokens", 0) + read + write
    completion = counts.get("output_tokens", 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=read,
        reasoning_tokens=counts.get("thinking_tokens", 0),
        cache_write_tokens=write,
    )


def parse_usage(raw: Any) -> Usage | None:
    """A `Usage` from a Messages `usage` object (None when absent)."""
    state = _StreamState()
    state.add_usage(raw)
    return state.usage()


async def decode_stream(
    body: Body, answer_tool: str | None = None
) -> AsyncGenerator[ChatChunk, None]:
    """The chunks of a 2xx Messages body (see `AnthropicChatModel.stream`);
    with `answer_tool`, that tool's call is the answer (see the module
    docstring)."""
    provider = body.provider
    media = body.content_type.partition(";")[0].strip().lower()
    if media.endswith("json"):
        for part in _decode_message(provider, await body.text(), answer_tool):
            yield part
        body.finished = True
        return
    if not is_event_stream(body.content_type):
        text = await body.text()
        raise ModelError(
            f"{provider} did not answer with an event stream "
            f"(Content-Type {body.content_type!r}): {clip(' '.join(text.split()))}",
            status_code=body.response.status_code,
            cause=FailureCause.BAD_RESPONSE,
        )
    state = _StreamState(answer_tool=answer_tool)
    try:
        async for batch in EventStream(body, body.event_idle_s, keepalive=_KEEPALIVE):
            for event, data in batch:
                payload = _decode(provider, data)
                kind = payload.get("type")
                if event == "error" or kind == "error":
                    raise stream_error(provider, payload, state.usage())
                if kind == "message_stop":
                    body.finished = True
                    return
                chunk = _on_event(kind, payload, state)
                if chunk is not None:
                    yield chunk
    except httpx.HTTPError:
        if state.finish_reason is None:
            raise
        log.warning(
            "%s: connection lost after stop reason %r; keeping the answer",
            provider,
            state.finish_reason,
        )
        return
    if state.finish_reason is None:
        raise ModelError(
            "model stream ended before completion: "
            f"{provider} closed the stream without a stop reason or message_stop",
            retryable=True,
            cause=FailureCause.INCOMPLETE,
            usage=state.usage(),
        )


def _decode(provider: str, data: str) -> dict[str, Any]:
    try:
        payload = jsontext.loads(data, exact_integers=False)  # numbers: counts and times
    except ValueError as exc:
        raise ModelError(f"{provider} sent a malformed stream event: {clip(data)!r}") from exc
    if not isinstance(payload, dict):
        raise ModelError(f"{provider} sent a malformed stream event: {clip(data)!r}")
    return payload


def _on_event(kind: Any, payload: dict[str, Any], state: _StreamState) -> ChatChunk | None:
    if kind == "content_block_delta":
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return None
        block = state.blocks.get(payload.get("index"))  # type: ignore[arg-type]
        if block is None:
            # A delta of a block whose start was not seen: read it by its type.
            block = _Block("text")
        delta_kind = delta.get("type")
        if delta_kind == "text_delta" and block.kind == "text":
            text = delta.get("text")
            return ChatChunk(content=text, model=state.model) if text else None
        if delta_kind == "thinking_delta":
            text = delta.get("thinking")
            return ChatChunk(reasoning=text, model=state.model) if text else None
        if delta_kind == "signature_delta":
            block.signature += delta.get("signature") or ""
            return None
        if delta_kind == "input_json_delta" and block.answer:
            partial = delta.get("partial_json")
            block.arguments_seen = block.arguments_seen or bool(partial)
            return ChatChunk(content=partial, model=state.model) if isinstance(partial, str) and partial else None
        if delta_kind == "input_json_delta" and block.call:
            partial = delta.get("partial_json")
            if not partial or not isinstance(partial, str):
                return None
            block.arguments_seen = True
            index = payload["index"]
            return ChatChunk(tool_calls=[ToolCallDelta(index, arguments=partial)], model=state.model)
        return None  # citations and the deltas of server-tool blocks
    if kind == "content_block_start":
        return _on_block_start(payload, state)
    if kind == "content_block_stop":
        return _on_block_stop(payload, state)
    if kind == "message_start":
        message = payload.get("message")
        if isinstance(message, dict):
            model = message.get("model")
            if isinstance(model, str) and model:
                state.model = model
            state.add_usage(message.get("usage"))
        return None
    if kind == "message_delta":
        state.add_usage(payload.get("usage"))
        delta = payload.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        if not isinstance(stop, str) or not stop:
            return ChatChunk(usage=state.usage(), model=state.model) if state.counts else None
        state.finish_reason = FINISH_REASONS.get(stop, stop)
        if state.finish_reason == FINISH_TOOL_CALLS and state.answer_tool and not state.calls:
            state.finish_reason = FINISH_STOP  # it answered with the structured-output tool
        refusal = None
        if state.finish_reason in (FINISH_REFUSAL, FINISH_CONTENT_FILTER):
            details = delta.get("stop_details") if isinstance(delta, dict) else None
            explanation = details.get("explanation") if isinstance(details, dict) else None
            refusal = explanation if isinstance(explanation, str) and explanation else stop
        return ChatChunk(
            finish_reason=state.finish_reason, usage=state.usage(), model=state.model,
            refusal=refusal,
        )  # fmt: skip
    return None  # unknown events are skipped, as the API's versioning asks


def _on_block_start(payload: dict[str, Any], state: _StreamState) -> ChatChunk | None:
    index = payload.get("index")
    start = payload.get("content_block")
    if not isinstance(index, int) or not isinstance(start, dict):
        return None
    kind = start.get("type")
    block = state.blocks[index] = _Block(str(kind))
    if kind == "text":
        text = start.get("text")
        return ChatChunk(content=text, model=state.model) if text else None
    if kind == "thinking":
        block.signature = start.get("signature") or ""
        text = start.get("thinking")
        return ChatChunk(reasoning=text, model=state.model) if text else None
    if kind == "redacted_thinking":
        data = start.get("data")
        return ChatChunk(redacted_reasoning=data, model=state.model) if data else None
    if kind == "tool_use" and state.answer_tool and start.get("name") == state.answer_tool:
        block.answer = True
        block.start_input = start.get("input")
        return None
    if kind == "tool_use":
        state.calls += 1
        block.call = True
        block.start_input = start.get("input")
        delta = ToolCallDelta(index, id=start.get("id") or None, name=start.get("name") or None)
        return ChatChunk(tool_calls=[delta], model=state.model)
    return None  # server_tool_use, web_search_tool_result, …: run by the provider


def _on_block_stop(payload: dict[str, Any], state: _StreamState) -> ChatChunk | None:
    block = state.blocks.get(payload.get("index"))  # type: ignore[arg-type]
    if block is None:
        return None
    if block.kind == "thinking" and block.signature:
        return ChatChunk(reasoning_signature=block.signature, model=state.model)
    if block.answer and not block.arguments_seen:
        start = block.start_input
        return ChatChunk(content=json.dumps(start if isinstance(start, dict) else {}),
                         model=state.model)
    if block.call and not block.arguments_seen:
        # No input_json_delta: the input is what the start said ({} for none).
        start = block.start_input
        arguments = json.dumps(start) if isinstance(start, dict) and start else "{}"
        return ChatChunk(
            tool_calls=[ToolCallDelta(payload["index"], arguments=arguments)], model=state.model
        )
    return None


def _decode_message(provider: str, text: str, answer_tool: str | None = None) -> list[ChatChunk]:
    """The chunks of a whole (non-streamed) Messages response."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"{provider} sent malformed JSON: {clip(text)}") from exc
    if not isinstance(message, dict) or message.get("type") == "error":
        raise stream_error(provider, message)
    state = _StreamState(answer_tool=answer_tool)
    _on_event("message_start", {"message": {**message, "usage": None}}, state)
    chunks: list[ChatChunk] = []
    for index, block in enumerate(message.get("content") or []):
        if not isinstance(block, dict):
            continue
        start = dict(block)
        if block.get("type") == "tool_use":
            start["input"] = block.get("input") or {}
        for chunk in (
            _on_block_start({"index": index, "content_block": start}, state),
            _on_block_stop({"index": index}, state),
        ):
            if chunk is not None:
                chunks.append(chunk)
    stop = _on_event(
        "message_delta",
        {"delta": {"stop_reason": message.get("stop_reason"),
                   "stop_details": message.get("stop_details")},
         "usage": message.get("usage")},
        state,
    )  # fmt: skip
    if stop is None or state.finish_reason is None:
        raise ModelError(
            f"model stream ended before completion: {provider} sent a message without a stop reason",
            retryable=True,
            cause=FailureCause.INCOMPLETE,
        )
    chunks.append(stop)
    return chunks


def stream_error(provider: str, raw: Any, usage: Usage | None = None) -> ModelError:
    """The `ModelError` for an `error` event inside a 200 stream:
    `{"type": "error", "error": {"type", "message"}}`; `status_code` is
    the status its type stands for, `retryable` for overloaded, API, rate
    limit and timeout errors."""
    message, code = describe_error_body(raw, json.dumps(raw) if not isinstance(raw, str) else raw)
    status = ERROR_STATUSES.get(code or "")
    retryable = status is not None and (status == 429 or status >= 500)
    suffix = f" (code {code})" if code else ""
    return ModelError(
        f"{provider} reported an error in the stream: {message or 'no message'}{suffix}",
        status_code=status,
        code=code,
        retryable=retryable,
        cause=FailureCause.ERROR_EVENT,
        usage=usage,
    )
