"""The agent loop (seed 003 `Agent::run_stream`), with run control and
tracing.

`run_agent` drives up to `max_iterations` model rounds on a history it
mutates in place and yields the run's events, ending with exactly one
`Done`:

- Before each round: a stop request ends the run (CANCELLED, TIMEOUT), the
  token budget is checked (BUDGET_EXCEEDED), and queued steering messages
  are appended as user messages, each with `UserSteered`.
- The model output streams as Text*/Thinking* segments, one open at a time;
  `ToolCallsBegin` as soon as tool names appear. A model error ends the run
  with ERROR; a stop request closes the model stream at once. Either way
  the round leaves no trace in the history.
- After the stream: `ToolCallsStart`; calls that need approval emit
  `ApprovalRequired` and wait for a decision; every call runs concurrently;
  `ToolResult` in completion order; tool messages appended in call order;
  `ToolCallsComplete`. A stop request during the tool phase cancels the
  calls still running (their RPCs are cancelled) and gives each a
  "cancelled" result, so the stored history never holds a tool call
  without its result.
- Text without tool calls ends the run (TEXT_RESPONSE), unless steering is
  pending and the late-steering policy is FOLLOW_UP: then a follow-up round
  answers it. Out of rounds: MAX_ITERATIONS.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pilothouse import jsontext
from pilothouse.runtime import compaction
from pilothouse.runtime.agent import Agent, ApprovalPolicy
from pilothouse.runtime.control import Decision, LateSteeringPolicy, RunControl, Verdict
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    ApprovalRequired,
    Compacted,
    ContextUsage,
    DecisionApplied,
    Done,
    Event,
    QuestionAsked,
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
from pilothouse.runtime.model.base import ChatChunk, ChatModel, ModelError
from pilothouse.runtime.model.builder import MessageBuilder
from pilothouse.runtime.tools import (
    ASK_USER,
    ToolAnswer,
    ToolContext,
    ToolDispatcher,
    ToolQuestion,
)

tracer = trace.get_tracer("pilothouse.runtime")

# Semconv names not (yet) exported as constants by this semconv package.
ERROR_TYPE = "error.type"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds
CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"

#: Context window assumed when the agent does not declare one, in tokens.
DEFAULT_CONTEXT_WINDOW = 128_000
#: Questions one tool call may ask before its answer.
MAX_TOOL_QUESTIONS = 3
#: How long an approval or question waits by default, seconds.
DEFAULT_DECISION_TIMEOUT_S = 600.0


@dataclass(slots=True)
class LoopContext:
    """The run the loop works for.

    `history_start` is the index of the run's first new message in the
    history. `remember_approval(tool)` persists an "approve always". When
    the history is compacted during the run, `compact_summary` is set,
    `messages_before_compact` holds the run's messages from before it, and
    `history_start` becomes 1 (after the summary message); the caller
    stores a compact marker between the two."""

    session_id: str
    run_id: str
    control: RunControl
    history_start: int = 0
    remember_approval: Callable[[str], Awaitable[None]] | None = None
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    compact_summary: str | None = None
    messages_before_compact: list[Message] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


class _Stop:
    """Sentinel put on internal queues when a stop is requested."""


_STOP = _Stop()
_END = object()


def _last_sender(history: list[Message]) -> str:
    for message in reversed(history):
        if message.role is Role.USER:
            return message.sender
    return ""


def _tokens(usage: Usage) -> int:
    return usage.total_tokens or usage.prompt_tokens + usage.completion_tokens


async def run_agent(
    agent: Agent,
    model: ChatModel,
    dispatcher: ToolDispatcher,
    history: list[Message],
    ctx: LoopContext,
) -> AsyncIterator[Event]:
    """Run the loop; see the module docstring. `history` is mutated in
    place; the caller stores it. Yields events, the last one a `Done`."""
    control = ctx.control
    steps: list[AgentStep] = []
    model_name = agent.config.model

    def done(stop: StopReason, final: str = "", error: str = "") -> Done:
        unapplied = [UserSteered(c, s) for c, s in control.steering.close()]
        return Done(
            AgentResponse(
                final_response=final,
                iterations=len(steps),
                stop_reason=stop,
                steps=steps,
                model=model_name,
                error=error,
                usage=ctx.usage,
                unapplied_steering=unapplied,
            )
        )

    def stopped() -> Done:
        assert control.stop_reason is not None
        return done(control.stop_reason, error=control.stop_message)

    for _ in range(agent.config.max_iterations):
        if control.stopped:
            yield stopped()
            return
        budget = control.options.token_budget
        if budget and _tokens(ctx.usage) >= budget:
            yield done(
                StopReason.BUDGET_EXCEEDED,
                error=f"the run used {_tokens(ctx.usage)} tokens of its budget of {budget}",
            )
            return
        for content, sender in control.steering.take_all():
            sender = sender or _last_sender(history)
            history.append(Message.user(content, sender))
            trace.get_current_span().add_event("user_steered", {"pilothouse.sender": sender})
            yield UserSteered(content, sender)

        # --- One model round -------------------------------------------
        request = agent.build_request(history)
        builder = MessageBuilder()
        round_state = _RoundState()
        with tracer.start_as_current_span(
            f"{gen_ai.GenAiOperationNameValues.CHAT.value} {model_name}", kind=SpanKind.CLIENT
        ) as span:
            _start_chat_span(span, model, model_name, ctx.session_id)
            async for event in _stream_round(model, request, builder, round_state, control):
                yield event
            _record_chat(span, round_state)

        if round_state.stopped:
            yield stopped()
            return
        if round_state.error is not None:
            yield done(StopReason.ERROR, error=round_state.error)
            return

        message = builder.build()
        usage = round_state.usage or Usage()
        ctx.usage = ctx.usage + usage
        if usage != Usage():
            yield UsageReported(len(steps) + 1, usage)
        yield ContextUsage(
            compaction.estimate_tokens(history) + len(agent.config.system_prompt) // 4,
            usage.prompt_tokens,
            agent.config.context_window or DEFAULT_CONTEXT_WINDOW,
        )
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
            tool_context = ToolContext(agent.name, sender, ctx.session_id, ctx.run_id)
            buffered: list[ToolResult | None] = [None] * len(message.tool_calls)
            async for item in _tool_phase(agent, dispatcher, message.tool_calls, tool_context, ctx):
                if isinstance(item, tuple):
                    index, result = item
                    buffered[index] = result
                    yield result
                else:
                    yield item
            # Providers pair results with calls by position: call order.
            results = [r for r in buffered if r is not None]
            for result in results:
                history.append(Message.tool(result.text, result.call_id, result.name))
            yield ToolCallsComplete()

        steps.append(
            AgentStep(message, usage, round_state.finish_reason, list(message.tool_calls), results)
        )
        if control.stopped:
            yield stopped()
            return

        if message.tool_calls:
            threshold = agent.config.compact_threshold
            if threshold and compaction.estimate_tokens(history) > threshold:
                summary = await _compact(model, agent, history)
                if summary is not None:
                    ctx.compact_summary = summary
                    ctx.messages_before_compact.extend(history[ctx.history_start :])
                    history[:] = [Message.user(summary)]
                    ctx.history_start = 1
                    trace.get_current_span().add_event("compacted")
                    yield Compacted(summary)
            continue

        if control.steering.pending() and control.options.late_steering is LateSteeringPolicy.FOLLOW_UP:
            continue  # steering that came in during the last round gets an answer
        yield done(StopReason.TEXT_RESPONSE, final=message.content)
        return

    last = steps[-1].message.content if steps else ""
    yield done(StopReason.MAX_ITERATIONS, final=last)


async def _compact(model: ChatModel, agent: Agent, history: list[Message]) -> str | None:
    with tracer.start_as_current_span("compact_history") as span:
        try:
            return await compaction.summarize(model, agent, history)
        except ModelError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.message))
            return None


# --- The model stream ------------------------------------------------------


@dataclass(slots=True)
class _RoundState:
    finish_reason: str = ""
    usage: Usage | None = None
    response_model: str = ""
    error: str | None = None
    stopped: bool = False
    first_chunk_at: float | None = None
    started_at: float = field(default_factory=time.perf_counter)


async def _pump(stream: AsyncIterator[ChatChunk], queue: asyncio.Queue[object]) -> None:
    """Read the model stream into `queue`, ending with _END or the error."""
    try:
        async for chunk in stream:
            queue.put_nowait(chunk)
        queue.put_nowait(_END)
    except ModelError as exc:
        queue.put_nowait(exc)
    except Exception as exc:  # a provider bug must not kill the run silently
        queue.put_nowait(ModelError(f"model call failed: {type(exc).__name__}: {exc}"))
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _stream_round(
    model: ChatModel,
    request,
    builder: MessageBuilder,
    state: _RoundState,
    control: RunControl,
) -> AsyncIterator[Event]:
    """Events of one model round. The stream is read by a pump task so a
    stop request can close it at once (the HTTP response is closed)."""
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump = asyncio.create_task(_pump(model.stream(request), queue))
    remove_waker = _on_stop(control, lambda: queue.put_nowait(_STOP))
    open_segment: type[TextStart] | type[ThinkingStart] | None = None
    begin_sent = False
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if item is _STOP:
                state.stopped = True
                break
            if isinstance(item, ModelError):
                state.error = item.message
                break
            chunk: ChatChunk = item  # type: ignore[assignment]
            if state.first_chunk_at is None:
                state.first_chunk_at = time.perf_counter()
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
        if not pump.done():
            pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    if open_segment is TextStart:
        yield TextEnd()
    elif open_segment is ThinkingStart:
        yield ThinkingEnd()


def _on_stop(control: RunControl, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` once when a stop is requested (at once if it already
    was); returns a function that removes it."""
    if control.stopped:
        callback()
        return lambda: None
    waiter = asyncio.ensure_future(control.stop_event.wait())
    waiter.add_done_callback(lambda f: None if f.cancelled() else callback())
    return waiter.cancel


def _start_chat_span(span: Span, model: ChatModel, model_name: str, session_id: str) -> None:
    span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GenAiOperationNameValues.CHAT.value)
    span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, model.provider_name)
    span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, model_name)
    span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, session_id)


def _record_chat(span: Span, state: _RoundState) -> None:
    if state.response_model:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, state.response_model)
    if state.finish_reason:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [state.finish_reason])
    if state.usage is not None:
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, state.usage.prompt_tokens)
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, state.usage.completion_tokens)
        if state.usage.cached_tokens:
            span.set_attribute(CACHE_READ_INPUT_TOKENS, state.usage.cached_tokens)
        if state.usage.reasoning_tokens:
            span.set_attribute(REASONING_OUTPUT_TOKENS, state.usage.reasoning_tokens)
    if state.first_chunk_at is not None:
        seconds = state.first_chunk_at - state.started_at
        span.set_attribute(TIME_TO_FIRST_CHUNK, seconds)
        span.set_attribute("pilothouse.time_to_first_chunk_ms", round(seconds * 1000, 3))
    if state.stopped:
        span.add_event("cancelled")
    if state.error is not None:
        span.set_attribute(ERROR_TYPE, "model_error")
        span.set_status(Status(StatusCode.ERROR, state.error))


# --- The tool phase --------------------------------------------------------


def needs_approval(agent: Agent, call: ToolCall, approved: set[str]) -> str | None:
    """Why `call` needs a decision, or None when it can run."""
    if call.name == ASK_USER.name or call.name in approved:
        return None
    policy = agent.config.approval_policy
    if policy is ApprovalPolicy.NEVER:
        return None
    if policy is ApprovalPolicy.ALWAYS:
        return "the agent's policy requires approval of every tool call"
    if call.name in agent.config.approval_required_tools:
        return "the agent's policy requires approval of this tool"
    spec = next((t for t in agent.tools if t.name == call.name), None)
    if spec is not None and spec.requires_approval:
        return "the ToolExecutor declares that this tool requires approval"
    return None


async def _tool_phase(
    agent: Agent,
    dispatcher: ToolDispatcher,
    calls: list[ToolCall],
    tool_context: ToolContext,
    ctx: LoopContext,
) -> AsyncIterator[tuple[int, ToolResult] | Event]:
    """Run every call concurrently; yield (call index, result) in completion
    order, and approval/question events as they happen. On a stop request
    the calls still running are cancelled and get a "cancelled" result."""
    control = ctx.control
    queue: asyncio.Queue[object] = asyncio.Queue()
    allowed = {t.name for t in agent.tools}
    started = [time.perf_counter()] * len(calls)

    async def run_one(index: int, call: ToolCall) -> None:
        started[index] = time.perf_counter()
        result = await _run_call(agent, dispatcher, call, tool_context, ctx, queue, call.name in allowed)
        queue.put_nowait((index, result))

    tasks = [asyncio.create_task(run_one(i, call)) for i, call in enumerate(calls)]
    remove_waker = _on_stop(control, lambda: queue.put_nowait(_STOP))
    finished: set[int] = set()
    try:
        while len(finished) < len(calls):
            item = await queue.get()
            if item is _STOP:
                break
            if isinstance(item, tuple):
                finished.add(item[0])
            yield item  # type: ignore[misc]
    finally:
        remove_waker()
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Results that arrived while the stop was being handled, then the rest.
    while not queue.empty():
        item = queue.get_nowait()
        if isinstance(item, tuple) and item[0] not in finished:
            finished.add(item[0])
            yield item
    reason = control.stop_message or (control.stop_reason.value if control.stop_reason else "")
    for index, call in enumerate(calls):
        if index not in finished:
            elapsed = int((time.perf_counter() - started[index]) * 1000)
            error = f"cancelled: {reason}" if reason else "cancelled"
            yield index, ToolResult(call.id, call.name, error=error, duration_ms=elapsed)


async def _run_call(
    agent: Agent,
    dispatcher: ToolDispatcher,
    call: ToolCall,
    tool_context: ToolContext,
    ctx: LoopContext,
    events: asyncio.Queue[object],
    allowed: bool,
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
        span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, tool_context.session_id)
        output: str | None
        error: str | None
        try:
            if not call.name:
                output = None
                error = "this tool call names no tool (its function name is empty)"
            elif not allowed:
                output = None
                error = f"tool {call.name!r} is not available to agent {tool_context.agent!r}"
            elif call.name == ASK_USER.name:
                output, error = await _ask_user(call, ctx, events, span)
            else:
                why = needs_approval(agent, call, ctx.control.approved_tools)
                denial = await _approve(call, why, ctx, events, span) if why else None
                if denial is not None:
                    output, error = None, denial
                else:
                    output, error = await _dispatch_with_answers(
                        dispatcher, call, tool_context, ctx, events, span
                    )
        except asyncio.CancelledError:
            # The SDK records only Exceptions: mark the cancellation here.
            span.add_event("cancelled")
            span.set_attribute(ERROR_TYPE, "cancelled")
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            raise
        if error is not None:
            span.set_attribute(ERROR_TYPE, "tool_error")
            span.set_status(Status(StatusCode.ERROR, error))
    duration_ms = int((time.perf_counter() - start) * 1000)
    if error is not None:
        return ToolResult(call.id, call.name, error=error, duration_ms=duration_ms)
    return ToolResult(call.id, call.name, output=output or "", duration_ms=duration_ms)


async def _wait_decision(
    request_id: str, kind: str, ctx: LoopContext, timeout_s: float, **expect: object
) -> Decision | None:
    future = ctx.control.expect(request_id, kind, **expect)  # type: ignore[arg-type]
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        return None
    finally:
        ctx.control.forget(request_id)


async def _approve(
    call: ToolCall, why: str, ctx: LoopContext, events: asyncio.Queue[object], span: Span
) -> str | None:
    """Wait for a decision on `call`; the denial text, or None to run it."""
    timeout = ctx.control.options.decision_timeout_s or ctx.decision_timeout_s
    events.put_nowait(ApprovalRequired(call.id, call, why, time.time() + timeout))
    span.add_event("approval_wait_started", {"pilothouse.reason": why})
    decision = await _wait_decision(call.id, "approval", ctx, timeout)
    if decision is None:
        decision = Decision(call.id, Verdict.DENY, f"no decision within {timeout:g}s")
    span.add_event("approval_decided", {"pilothouse.verdict": decision.verdict.value})
    events.put_nowait(DecisionApplied(call.id, decision))
    if decision.verdict is Verdict.APPROVE_ALWAYS:
        ctx.control.approved_tools.add(call.name)
        if ctx.remember_approval is not None:
            await ctx.remember_approval(call.name)
    if decision.verdict is Verdict.DENY:
        reason = f": {decision.reason}" if decision.reason else ""
        return f"the user denied this call to {call.name}{reason}"
    return None


async def _ask(
    request_id: str,
    question: ToolQuestion,
    ctx: LoopContext,
    events: asyncio.Queue[object],
    span: Span,
) -> Decision | None:
    """Emit `QuestionAsked`, wait for the answer; None when none came in
    time."""
    timeout = ctx.control.options.decision_timeout_s or ctx.decision_timeout_s
    events.put_nowait(
        QuestionAsked(
            request_id, question.question, list(question.options), question.multi_select,
            time.time() + timeout,
        )
    )
    span.add_event("question_wait_started")
    decision = await _wait_decision(
        request_id, "question", ctx, timeout,
        options=question.options, multi_select=question.multi_select,
    )
    if decision is not None:
        events.put_nowait(DecisionApplied(request_id, decision))
    return decision


def _no_answer(ctx: LoopContext) -> str:
    timeout = ctx.control.options.decision_timeout_s or ctx.decision_timeout_s
    return f"the user did not answer within {timeout:g}s"


async def _ask_user(
    call: ToolCall, ctx: LoopContext, events: asyncio.Queue[object], span: Span
) -> tuple[str | None, str | None]:
    """The built-in `ask_user` tool: ask, wait, return the answer as JSON."""
    try:
        args = jsontext.loads(call.arguments or "{}")
        question = args["question"]
        options = tuple(str(o) for o in args.get("options", []))
        multi = bool(args.get("multi_select", False))
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"invalid arguments for ask_user: {exc}"
    decision = await _ask(call.id, ToolQuestion(question, options, multi), ctx, events, span)
    if decision is None:
        return None, _no_answer(ctx)
    answer: dict[str, object] = {}
    if decision.selected_options:
        answer["selected_options"] = list(decision.selected_options)
    if decision.text:
        answer["text"] = decision.text
    return json.dumps(answer, ensure_ascii=False), None


async def _dispatch_with_answers(
    dispatcher: ToolDispatcher,
    call: ToolCall,
    tool_context: ToolContext,
    ctx: LoopContext,
    events: asyncio.Queue[object],
    span: Span,
) -> tuple[str | None, str | None]:
    """Dispatch `call`; while the tool answers with a question, ask the
    user and dispatch again with the answer (at most MAX_TOOL_QUESTIONS
    times). Returns (output, error)."""
    outcome = await dispatcher.dispatch(call, tool_context)
    for asked in range(1, MAX_TOOL_QUESTIONS + 1):
        if outcome.question is None:
            return outcome.output, outcome.error
        request_id = call.id if asked == 1 else f"{call.id}:{asked}"
        decision = await _ask(request_id, outcome.question, ctx, events, span)
        if decision is None:
            return None, _no_answer(ctx)
        answer = ToolAnswer(decision.selected_options, decision.text)
        outcome = await dispatcher.dispatch(call, tool_context, answer)
    if outcome.question is not None:
        return None, f"tool {call.name!r} asked more than {MAX_TOOL_QUESTIONS} questions"
    return outcome.output, outcome.error
