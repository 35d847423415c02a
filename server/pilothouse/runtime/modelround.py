"""One model round: the request (through the `before_model_call` hooks),
its stream turned into events, and retries — a stream that fails after it
began is made again up to `LoopContext.stream_retries` times, then once on
the agent's fallback model. A stop request or the output limit closes the
stream at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pilothouse.runtime import spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.control import RunControl
from pilothouse.runtime.events import (
    Event,
    RoundRetried,
    TextDelta,
    TextEnd,
    TextStart,
    ThinkingDelta,
    ThinkingEnd,
    ThinkingStart,
    ToolCallsBegin,
)
from pilothouse.runtime.hooks import HookError, Stop
from pilothouse.runtime.loopcontext import DEFAULT_MAX_OUTPUT_CHARS, LoopContext
from pilothouse.runtime.messages import Message, Usage
from pilothouse.runtime.model.base import ChatModel, ChatRequest, ModelError
from pilothouse.runtime.model.builder import MessageBuilder
from pilothouse.runtime.runmetrics import ROUND_CANCELLED, ROUND_FAILED, ModelRound
from pilothouse.runtime.toolphase import on_stop


@dataclass(slots=True)
class RoundOutcome:
    finish_reason: str = ""
    usage: Usage | None = None
    response_model: str = ""
    #: The provider's refusal text or explanation, when it refused.
    refusal: str = ""
    #: A hook's `Stop` message (the round was not made).
    guardrail: str | None = None
    error: str | None = None
    failure: ModelError | None = None
    stopped: bool = False
    #: The stream was closed at the output limit.
    truncated: bool = False
    first_chunk_at: float | None = None
    started_at: float = field(default_factory=time.perf_counter)


async def model_round(
    agent: Agent,
    model: ChatModel,
    history: list[Message],
    ctx: LoopContext,
    state: RoundOutcome,
) -> AsyncIterator[Event | MessageBuilder]:
    """One model round: events, then the MessageBuilder of the attempt that
    succeeded. A stream that fails after it began is made again (with a
    `RoundRetried` first) up to `ctx.stream_retries` times; then, and for
    any other retryable failure, once more on the fallback model. The
    outcome is left in `state` (error, stopped, usage...)."""
    request = agent.build_request(history)
    # --- hooks: before_model_call may change the request or stop the run ---
    if ctx.hooks is not None and ctx.hooks.has("before_model_call"):
        try:
            checked = await ctx.hooks.before_model_call(request)
        except HookError as exc:
            state.error = exc.message
            return
        if isinstance(checked, Stop):
            state.guardrail = checked.message
            return
        request = checked
    fallback = agent.config.fallback_model
    model_name = agent.config.model
    used_fallback = not fallback or fallback == model_name
    same_model_retries = retries = 0
    while True:
        builder = MessageBuilder()
        state.error = state.failure = state.first_chunk_at = state.usage = None
        state.truncated = False
        state.finish_reason = state.response_model = state.refusal = ""
        state.started_at = time.perf_counter()
        ended = False
        with spans.chat_span(model.provider_name, model_name, ctx.session_id) as span:
            try:
                async for event in _stream_round(model, request, builder, state, ctx.control,
                                                 ctx.max_output_chars):
                    yield event
                ended = True
            finally:
                ttfc = None if state.first_chunk_at is None else state.first_chunk_at - state.started_at
                ctx.metrics.model_round(ModelRound(
                    model.provider_name, model_name, state.response_model,
                    time.perf_counter() - state.started_at, state.usage, ttfc,
                    ROUND_CANCELLED if state.stopped or not ended
                    else ROUND_FAILED if state.error is not None else None,
                ))
            spans.end_chat_span(
                span,
                response_model=state.response_model,
                finish_reason=state.finish_reason,
                usage=state.usage,
                time_to_first_chunk_s=ttfc,
                stopped=state.stopped,
                error=state.error,
            )
        failure = state.failure
        if failure is not None and failure.usage is not None:
            ctx.usage = ctx.usage + failure.usage  # a failed stream's tokens still count
        if state.stopped or failure is None:
            yield builder
            return
        if not failure.retryable:
            return
        if failure.mid_stream and same_model_retries < ctx.stream_retries:
            same_model_retries += 1
        elif not used_fallback:
            used_fallback, model_name, same_model_retries = True, fallback, 0
            request = dataclasses.replace(request, model=model_name)
        else:
            return
        retries += 1
        cause = failure.cause or ("stream_failed" if failure.mid_stream else "model_error")
        spans.event("round_retried", {"pilothouse.cause": cause})
        yield RoundRetried(retries, cause, failure.message, model_name)


async def _stream_round(
    model: ChatModel,
    request: ChatRequest,
    builder: MessageBuilder,
    state: RoundOutcome,
    control: RunControl,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> AsyncIterator[Event]:
    """Events of one model stream, read in the run's own task (no hand-off
    per chunk). A stop request closes the stream at once: while the task
    waits for the next chunk, the stop cancels that wait (and only that
    wait: the cancellation is taken back, as `asyncio.timeout` does, unless
    someone else cancelled the task too); past `max_output_chars`
    characters of output the stream is closed too (`truncated`)."""
    output = 0
    task = asyncio.current_task()
    assert task is not None
    stream = aiter(model.stream(request))
    reading = stop_requested = cancelled_by_stop = False

    def wake() -> None:
        nonlocal stop_requested, cancelled_by_stop
        stop_requested = True
        if reading and not cancelled_by_stop:
            cancelled_by_stop = True
            task.cancel()

    remove_waker = on_stop(control, wake)
    open_segment: type[TextStart] | type[ThinkingStart] | None = None
    begin_sent = False
    try:
        while True:
            if stop_requested:
                state.stopped = True
                break
            reading = True
            failure: ModelError | None = None
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:
                if not cancelled_by_stop or task.cancelling() > 1:
                    raise  # cancelled by someone else (too)
            except ModelError as exc:
                failure = exc
            except Exception as exc:  # a provider bug must not kill the run silently
                failure = ModelError(f"model call failed: {type(exc).__name__}: {exc}")
            finally:
                reading = False
            if cancelled_by_stop:  # however the stream ended, the stop did it
                task.uncancel()
                state.stopped = True
                break
            if failure is not None:
                state.error, state.failure = failure.message, failure
                break
            if state.first_chunk_at is None:
                state.first_chunk_at = time.perf_counter()
            output += len(chunk.content or "") + len(chunk.reasoning or "") + sum(
                len(d.arguments or "") for d in chunk.tool_calls
            )
            if output > max_output_chars:
                state.truncated = True
                break
            if chunk.content:
                if open_segment is not TextStart:
                    if open_segment is ThinkingStart:
                        yield ThinkingEnd()
                    yield TextStart()
                    open_segment = TextStart
                yield TextDelta(chunk.content)
            if chunk.reasoning:
                if open_segment is not ThinkingStart:
                    if open_segment is TextStart:
                        yield TextEnd()
                    yield ThinkingStart()
                    open_segment = ThinkingStart
                yield ThinkingDelta(chunk.reasoning)
            if chunk.finish_reason:
                state.finish_reason = chunk.finish_reason
            if chunk.refusal:
                state.refusal += chunk.refusal
            if chunk.usage is not None:
                state.usage = chunk.usage
            if chunk.model:
                state.response_model = chunk.model
            builder.accept(chunk)
            if not begin_sent and chunk.tool_calls:
                calls = builder.peek_tool_calls()
                if calls:
                    begin_sent = True
                    yield ToolCallsBegin(calls)
    finally:
        remove_waker()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # closes the HTTP response of a stream left early
    if open_segment is TextStart:
        yield TextEnd()
    elif open_segment is ThinkingStart:
        yield ThinkingEnd()
