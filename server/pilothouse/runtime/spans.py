"""The OpenTelemetry GenAI spans of a run: `invoke_agent` (the run), `chat`
(a model round) and `execute_tool` (a tool call), with the semantic
conventions' attribute names. The agent loop, the tool phase and the run
scheduler open their spans through these helpers, so names and attributes
are set in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pilothouse.runtime.messages import Usage

tracer = trace.get_tracer("pilothouse.runtime")

# Semconv names not (yet) exported as constants by this semconv package.
ERROR_TYPE = "error.type"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
RUN_ID = "pilothouse.run.id"
STOP_REASON = "pilothouse.run.stop_reason"

_INVOKE_AGENT = gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value
_CHAT = gen_ai.GenAiOperationNameValues.CHAT.value
_EXECUTE_TOOL = gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value


def current_traceparent() -> str:
    """The W3C `traceparent` of the current span ("" when there is none,
    or it is not recording a valid trace)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextmanager
def agent_span(agent: str, model: str, session_id: str, run_id: str) -> Iterator[Span]:
    """`invoke_agent {agent}` around a run (kind INTERNAL)."""
    with tracer.start_as_current_span(f"{_INVOKE_AGENT} {agent}", kind=SpanKind.INTERNAL) as span:
        span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, _INVOKE_AGENT)
        span.set_attribute(gen_ai.GEN_AI_AGENT_NAME, agent)
        span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, session_id)
        span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, model)
        span.set_attribute(RUN_ID, run_id)
        yield span


def end_agent_span(span: Span, stop_reason: str, error: str, *, cancelled: bool) -> None:
    """Record how the run ended on its span."""
    span.set_attribute(STOP_REASON, stop_reason)
    if cancelled:
        span.add_event("cancelled", {"pilothouse.reason": error})
    if stop_reason == "error":
        span.set_attribute(ERROR_TYPE, "run_error")
        span.set_status(Status(StatusCode.ERROR, error))


@contextmanager
def chat_span(provider: str, model: str, session_id: str) -> Iterator[Span]:
    """`chat {model}` around one model round (kind CLIENT)."""
    with tracer.start_as_current_span(f"{_CHAT} {model}", kind=SpanKind.CLIENT) as span:
        span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, _CHAT)
        span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, provider)
        span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, model)
        span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, session_id)
        yield span


def end_chat_span(
    span: Span,
    *,
    response_model: str,
    finish_reason: str,
    usage: Usage | None,
    time_to_first_chunk_s: float | None,
    stopped: bool,
    error: str | None,
) -> None:
    """Record a model round's outcome on its span."""
    if response_model:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, response_model)
    if finish_reason:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [finish_reason])
    if usage is not None:
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, usage.prompt_tokens)
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, usage.completion_tokens)
        if usage.cached_tokens:
            span.set_attribute(CACHE_READ_INPUT_TOKENS, usage.cached_tokens)
        if usage.reasoning_tokens:
            span.set_attribute(REASONING_OUTPUT_TOKENS, usage.reasoning_tokens)
    if time_to_first_chunk_s is not None:
        span.set_attribute(TIME_TO_FIRST_CHUNK, time_to_first_chunk_s)
        span.set_attribute("pilothouse.time_to_first_chunk_ms", round(time_to_first_chunk_s * 1000, 3))
    if stopped:
        span.add_event("cancelled")
    if error is not None:
        span.set_attribute(ERROR_TYPE, "model_error")
        span.set_status(Status(StatusCode.ERROR, error))


@contextmanager
def tool_span(name: str, call_id: str, session_id: str) -> Iterator[Span]:
    """`execute_tool {name}` around one tool call (kind INTERNAL). A
    cancellation is marked on the span (the SDK records only Exceptions)."""
    with tracer.start_as_current_span(f"{_EXECUTE_TOOL} {name}", kind=SpanKind.INTERNAL) as span:
        span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, _EXECUTE_TOOL)
        span.set_attribute(gen_ai.GEN_AI_TOOL_NAME, name)
        span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_ID, call_id)
        span.set_attribute(gen_ai.GEN_AI_TOOL_TYPE, "function")
        span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, session_id)
        try:
            yield span
        except BaseException as exc:
            if not isinstance(exc, Exception):  # CancelledError
                span.add_event("cancelled")
                span.set_attribute(ERROR_TYPE, "cancelled")
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
            raise


def end_tool_span(span: Span, error: str | None) -> None:
    if error is not None:
        span.set_attribute(ERROR_TYPE, "tool_error")
        span.set_status(Status(StatusCode.ERROR, error))


def event(name: str, attributes: dict[str, str] | None = None) -> None:
    """Add an event to the current span."""
    trace.get_current_span().add_event(name, attributes or {})
