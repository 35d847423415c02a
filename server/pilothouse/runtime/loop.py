"""The agent loop (seed 003 `Agent::run_stream`), with tracing.

`run_agent` drives up to `max_iterations` model rounds on a history it
mutates in place and yields the run's events, ending with exactly one
`Done`. Before each round, queued steering messages are appended as user
messages (`UserSteered`). Model output streams as Text*/Thinking* segments,
one open at a time; `ToolCallsBegin` as soon as tool names appear; after the
stream `ToolCallsStart`, then every call dispatched concurrently,
`ToolResult` in completion order, tool messages appended in call order,
`ToolCallsComplete`. A failed round leaves no trace in the history.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pilothouse.runtime.agent import Agent
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    Done,
    Event,
    StopReason,
    TextDelta,
    TextEnd,
    TextStart,
    ThinkingDelta,
    ThinkingEnd,
    ThinkingStart,
    ToolCallsBegin,
    ToolCallsComplete,
    ToolCallsStart,
    ToolResult,
    UsageReported,
    UserSteered,
)
from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.model.base import ChatModel, ModelError
from pilothouse.runtime.model.builder import MessageBuilder
from pilothouse.runtime.tools import ToolContext, ToolDispatcher

tracer = trace.get_tracer("pilothouse.runtime")


class SteeringInbox:
    """Steering messages waiting for the next model round, in arrival order
    (unlike the seed's watch channel, none is dropped)."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[tuple[str, str]] = deque()

    def put(self, content: str, sender: str = "") -> None:
        self._queue.append((content, sender))

    def pending(self) -> bool:
        return bool(self._queue)

    def take_all(self) -> list[tuple[str, str]]:
        items = list(self._queue)
        self._queue.clear()
        return items


def _last_sender(history: list[Message]) -> str:
    for message in reversed(history):
        if message.role is Role.USER:
            return message.sender
    return ""


def _total_usage(steps: list[AgentStep]) -> Usage:
    total = Usage()
    for step in steps:
        total = total + step.usage
    return total


async def run_agent(
    agent: Agent,
    model: ChatModel,
    dispatcher: ToolDispatcher,
    history: list[Message],
    context: ToolContext,
    steering: SteeringInbox | None = None,
) -> AsyncIterator[Event]:
    """Run the loop; see the module docstring. `history` is mutated in
    place; the caller decides what to store. Yields events, the last one a
    `Done`. Cancellation propagates as `asyncio.CancelledError` after the
    in-flight tool calls are cancelled."""
    steps: list[AgentStep] = []
    model_name = agent.config.model

    def done(stop: StopReason, final: str = "", error: str = "") -> Done:
        return Done(
            AgentResponse(
                final_response=final,
                iterations=len(steps),
                stop_reason=stop,
                steps=steps,
                model=model_name,
                error=error,
                usage=_total_usage(steps),
            )
        )

    for _ in range(agent.config.max_iterations):
        if steering is not None:
            for content, sender in steering.take_all():
                sender = sender or _last_sender(history)
                history.append(Message.user(content, sender))
                yield UserSteered(content, sender)

        request = agent.build_request(history)
        builder = MessageBuilder()
        finish_reason = ""
        usage: Usage | None = None
        response_model = ""
        stream_error: str | None = None
        begin_sent = False
        open_segment: type[TextStart] | type[ThinkingStart] | None = None

        with tracer.start_as_current_span(
            f"{gen_ai.GenAiOperationNameValues.CHAT.value} {model_name}", kind=SpanKind.CLIENT
        ) as span:
            span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GenAiOperationNameValues.CHAT.value)
            span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, model.provider_name)
            span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, model_name)
            span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, context.session_id)
            try:
                async for chunk in model.stream(request):
                    if chunk.content is not None and chunk.content != "":
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
                        finish_reason = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if chunk.model:
                        response_model = chunk.model
                    builder.accept(chunk)
                    if not begin_sent and chunk.tool_calls:
                        calls = builder.peek_tool_calls()
                        if calls:
                            begin_sent = True
                            yield ToolCallsBegin(calls)
            except ModelError as exc:
                stream_error = exc.message
            except Exception as exc:  # a provider bug must not kill the run silently
                stream_error = f"model call failed: {type(exc).__name__}: {exc}"
            if open_segment is TextStart:
                yield TextEnd()
            elif open_segment is ThinkingStart:
                yield ThinkingEnd()
            _record_chat(span, response_model, finish_reason, usage, stream_error)

        if stream_error is not None:
            yield done(StopReason.ERROR, error=stream_error)
            return

        message = builder.build()
        usage = usage or Usage()
        if usage != Usage():
            yield UsageReported(len(steps) + 1, usage)
        if not message.content and not message.tool_calls:
            # Neither text nor a usable call (also what a silently dropped
            # connection looks like): store nothing for this round.
            yield done(StopReason.NO_ACTION)
            return

        history.append(message)
        results: list[ToolResult] = []
        if message.tool_calls:
            yield ToolCallsStart(list(message.tool_calls))
            sender = _last_sender(history)
            tool_context = ToolContext(agent.name, sender, context.session_id, context.run_id)
            buffered: list[ToolResult | None] = [None] * len(message.tool_calls)
            async for index, result in _dispatch_all(
                agent, dispatcher, message.tool_calls, tool_context
            ):
                buffered[index] = result
                yield result
            # Providers pair results with calls by position: call order.
            results = [r for r in buffered if r is not None]
            for result in results:
                history.append(Message.tool(result.text, result.call_id, result.name))
            yield ToolCallsComplete()

        steps.append(AgentStep(message, usage, finish_reason, list(message.tool_calls), results))
        if not message.tool_calls:
            if steering is not None and steering.pending():
                # Steering that arrived during the last round gets answered
                # by a follow-up round instead of being dropped.
                continue
            yield done(StopReason.TEXT_RESPONSE, final=message.content)
            return

    last = steps[-1].message.content if steps else ""
    yield done(StopReason.MAX_ITERATIONS, final=last)


def _record_chat(
    span: Span, response_model: str, finish_reason: str, usage: Usage | None, error: str | None
) -> None:
    if response_model:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, response_model)
    if finish_reason:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [finish_reason])
    if usage is not None:
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, usage.prompt_tokens)
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, usage.completion_tokens)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))


async def _dispatch_all(
    agent: Agent, dispatcher: ToolDispatcher, calls: list[ToolCall], context: ToolContext
) -> AsyncIterator[tuple[int, ToolResult]]:
    """Run every call concurrently; yield (call index, result) in completion
    order. Cancelling the consumer cancels the calls still running."""
    allowed = {t.name for t in agent.tools}

    async def indexed(index: int, call: ToolCall) -> tuple[int, ToolResult]:
        return index, await _dispatch_one(dispatcher, call, context, call.name in allowed)

    tasks = [asyncio.create_task(indexed(i, call)) for i, call in enumerate(calls)]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _dispatch_one(
    dispatcher: ToolDispatcher, call: ToolCall, context: ToolContext, allowed: bool
) -> ToolResult:
    start = time.perf_counter()
    with tracer.start_as_current_span(
        f"{gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value} {call.name}", kind=SpanKind.INTERNAL
    ) as span:
        span.set_attribute(
            gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value
        )
        span.set_attribute(gen_ai.GEN_AI_TOOL_NAME, call.name)
        span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_ID, call.id)
        span.set_attribute(gen_ai.GEN_AI_TOOL_TYPE, "function")
        span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, context.session_id)
        if allowed:
            outcome = await dispatcher.dispatch(call, context)
            output, error = outcome.output, outcome.error
        else:
            output, error = None, f"tool {call.name!r} is not available to agent {context.agent!r}"
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
    duration_ms = int((time.perf_counter() - start) * 1000)
    if error is not None:
        return ToolResult(call.id, call.name, error=error, duration_ms=duration_ms)
    return ToolResult(call.id, call.name, output=output or "", duration_ms=duration_ms)
