"""The agent loop: model rounds, steering, tool phases and checkpoints.

`run_agent` drives up to `max_iterations` model rounds on a history it
mutates in place and yields the run's events, ending with exactly one
`Done` (or nothing more after a handover stop):

- Before each round: a stop request ends the run (CANCELLED, TIMEOUT), the
  token budget is checked (BUDGET_EXCEEDED), and queued steering messages
  are appended as user messages, each with `UserSteered`, and
  checkpointed.
- The model output streams as Text*/Thinking* segments, one open at a time;
  `ToolCallsBegin` as soon as tool names appear. A stream that fails after
  it began is retried (`RoundRetried`) up to `stream_retries` times, then
  once more on the agent's fallback model; a failure left over ends the run
  with ERROR. A stop request closes the model stream at once. Either way
  the unfinished round leaves no trace in the history.
- After the stream: `ToolCallsStart`, then the tool phase
  (`pilothouse.runtime.toolphase`), journalled call by call; results are
  appended in call order; `ToolCallsComplete`. The completed round (the
  assistant message and its results) is one checkpoint.
- Text without tool calls ends the run (TEXT_RESPONSE), unless steering is
  pending and the late-steering policy is FOLLOW_UP: then a follow-up round
  answers it. Out of rounds: MAX_ITERATIONS.
- An answer without tool calls whose finish reason says it is incomplete
  ends the run with MAX_TOKENS ("length"), CONTENT_FILTER or REFUSAL, its
  text (if any) stored. With structured output (the agent's
  `response_json_schema`) the answer is validated; an invalid one is not
  stored and the round is made once more (`RoundRetried`, cause
  "invalid_structured_output") with the invalid answer and what was wrong
  sent to the model; a second invalid answer ends the run with ERROR.
- Hooks (`LoopContext.hooks`): `before_model_call` and `after_model_call`
  around every round (a `Stop` ends the run with GUARDRAIL, a failing hook
  with ERROR, the round not stored); the tool hooks run in the tool phase.

A resumed run (`LoopContext.resume`) starts with the steps it had
completed and, when it stopped during a tool phase, finishes that round's
tool phase first; a run stopped during a model stream redoes that round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pilothouse.runtime import answers, compaction, spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.control import LateSteeringPolicy, RunControl
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    Compacted,
    ContextUsage,
    Done,
    Event,
    RoundRetried,
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
    UsageReported,
    UserSteered,
)
from pilothouse.runtime.hookchain import RunHooks
from pilothouse.runtime.hooks import HookError, ModelResponse, Stop
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model.base import ChatChunk, ChatModel, ChatRequest, ModelError
from pilothouse.runtime.model.builder import MessageBuilder
from pilothouse.runtime.toolphase import (
    DEFAULT_DECISION_TIMEOUT_S,
    CallState,
    RoundState,
    ToolJournal,
    ToolPhaseContext,
    on_stop,
    run_tool_phase,
)
from pilothouse.runtime.tools import ToolContext, ToolDispatcher

#: Context window assumed when the agent does not declare one, in tokens.
DEFAULT_CONTEXT_WINDOW = 128_000
#: Retries of a model round whose stream failed after it began.
DEFAULT_STREAM_RETRIES = 2
#: Most characters (text, reasoning and tool-call arguments) one model round
#: may produce before its stream is closed.
DEFAULT_MAX_OUTPUT_CHARS = 4 * 1024 * 1024

__all__ = [
    "DEFAULT_DECISION_TIMEOUT_S",
    "LoopContext",
    "LoopJournal",
    "NullJournal",
    "Resume",
    "run_agent",
]


class LoopJournal(ToolJournal, Protocol):
    """Where the loop checkpoints the run (see `pilothouse.runtime.journal`).
    Every method returns once its write is durable."""

    async def steered(self, messages: list[Message]) -> None:
        """Steering messages were appended to the history."""
        ...

    async def round_done(self, messages: list[Message], step: AgentStep) -> None:
        """A round completed: `messages` (the assistant message and its tool
        results, in call order) were appended to the history."""
        ...

    async def compacted(self, summary: str) -> None:
        """The history was replaced by `summary`."""
        ...


class NullJournal:
    """A journal that stores nothing (a run without durability)."""

    async def steered(self, messages: list[Message]) -> None:
        return None

    async def round_done(self, messages: list[Message], step: AgentStep) -> None:
        return None

    async def compacted(self, summary: str) -> None:
        return None

    async def tool_round(self, state: RoundState) -> None:
        return None


@dataclass(slots=True)
class Resume:
    """Where a resumed run picks up: the rounds it completed, its usage so
    far, and the round whose tool phase was in progress, if any."""

    steps: list[AgentStep] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    round: RoundState | None = None


@dataclass(slots=True)
class LoopContext:
    """The run the loop works for. `remember_approval(tool)` persists an
    "approve always"; `stream_retries` bounds retries of a failed model
    stream; `usage` is the run's total so far (read by the caller when the
    run ends abnormally); `hooks` are the hook plugins bound to the run."""

    session_id: str
    run_id: str
    control: RunControl
    journal: LoopJournal = field(default_factory=NullJournal)
    remember_approval: Callable[[str], Awaitable[None]] | None = None
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    stream_retries: int = DEFAULT_STREAM_RETRIES
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    resume: Resume | None = None
    principal: str = ""
    principal_roles: tuple[str, ...] = ()
    usage: Usage = field(default_factory=Usage)
    hooks: RunHooks | None = None


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
    place. Yields events, the last one a `Done` unless the run was stopped
    for a handover."""
    control = ctx.control
    resume = ctx.resume or Resume()
    steps: list[AgentStep] = list(resume.steps)
    ctx.usage = resume.usage
    model_name = agent.config.model

    def done(stop: StopReason, final: str = "", error: str = "",
             structured: dict[str, Any] | None = None) -> Done:
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
                structured_output=structured,
            )
        )

    def stopped() -> Done | None:
        assert control.stop_reason is not None
        if control.stop_reason is StopReason.HANDOVER:
            return None
        return done(control.stop_reason, error=control.stop_message)

    def tool_phase_context() -> ToolPhaseContext:
        sender = _last_sender(history)
        return ToolPhaseContext(
            agent=agent,
            dispatcher=dispatcher,
            tool_context=ToolContext(agent.name, sender, ctx.session_id, ctx.run_id,
                                     ctx.principal, ctx.principal_roles),
            control=control,
            journal=ctx.journal,
            decision_timeout_s=ctx.decision_timeout_s,
            remember_approval=ctx.remember_approval,
            hooks=ctx.hooks,
        )

    async def complete(state: RoundState, phase: ToolPhaseContext) -> AsyncIterator[Event]:
        """The tool phase of `state`, then the round's checkpoint."""
        async for item in run_tool_phase(state, phase):
            yield item
        if control.stop_reason is StopReason.HANDOVER and any(
            c.result is None for c in state.calls
        ):
            return  # the round stays in the journal, unanswered calls and all
        results = state.results()
        messages = [state.message, *(Message.tool(r.text, r.call_id, r.name) for r in results)]
        history.extend(messages[1:])
        yield ToolCallsComplete()
        step = AgentStep(state.message, state.usage, state.finish_reason,
                         list(state.message.tool_calls), results)
        steps.append(step)
        await ctx.journal.round_done(messages, step)

    if resume.round is not None:
        # The round whose tool phase was cut short: its calls in their
        # journalled states, the assistant message already in `history`.
        state = resume.round
        yield ToolCallsStart(list(state.message.tool_calls))
        history.append(state.message)
        phase = tool_phase_context()
        phase.resumed = True
        async for item in complete(state, phase):
            yield item
        if control.stopped:
            final = stopped()
            if final is not None:
                yield final
            return

    # The invalid answer and its correction, sent with the next request only
    # (a structured-output retry); whether the run has had its retry.
    retry_extra: list[Message] = []
    structured_retried = False
    while len(steps) < agent.config.max_iterations:
        if control.stopped:
            final = stopped()
            if final is not None:
                yield final
            return
        budget = control.options.token_budget
        if budget and _tokens(ctx.usage) >= budget:
            yield done(
                StopReason.BUDGET_EXCEEDED,
                error=f"the run used {_tokens(ctx.usage)} tokens of its budget of {budget}",
            )
            return
        steered: list[Message] = []
        for content, sender in control.steering.take_all():
            sender = sender or _last_sender(history)
            message = Message.user(content, sender)
            history.append(message)
            steered.append(message)
            spans.event("user_steered", {"pilothouse.sender": sender})
            yield UserSteered(content, sender)
        if steered:
            await ctx.journal.steered(steered)

        # --- One model round, retried when its stream fails -------------
        round_state = _RoundState()
        builder = MessageBuilder()
        seen = [*history, *retry_extra] if retry_extra else history
        retry_extra = []
        async for item in _model_round(agent, model, seen, ctx, round_state):
            if isinstance(item, MessageBuilder):
                builder = item
            else:
                yield item
        if round_state.stopped:
            final = stopped()
            if final is not None:
                yield final
            return
        if round_state.error is not None:
            yield done(StopReason.ERROR, error=round_state.error)
            return
        if round_state.guardrail is not None:
            yield done(StopReason.GUARDRAIL, error=round_state.guardrail)
            return

        message = builder.build()
        if round_state.truncated:
            # Past the output limit: the text so far is the answer; calls
            # whose arguments may be cut are dropped, so history stays valid.
            message.tool_calls = []
        usage = round_state.usage or Usage()
        ctx.usage = ctx.usage + usage
        if usage != Usage():
            yield UsageReported(len(steps) + 1, usage)
        yield ContextUsage(
            compaction.estimate_tokens(history) + len(agent.config.system_prompt) // 4,
            usage.prompt_tokens,
            agent.config.context_window or DEFAULT_CONTEXT_WINDOW,
        )

        # --- hooks: after_model_call may change the answer or stop the run --
        if ctx.hooks is not None and ctx.hooks.has("after_model_call"):
            try:
                checked = await ctx.hooks.after_model_call(ModelResponse(
                    message, round_state.finish_reason, usage,
                    round_state.response_model or agent.config.model,
                ))
            except HookError as exc:
                yield done(StopReason.ERROR, error=exc.message)
                return
            if isinstance(checked, Stop):
                yield done(StopReason.GUARDRAIL, error=checked.message)
                return
            message, round_state.finish_reason = checked.message, checked.finish_reason

        # --- finish reasons that end the run: length, content filter, refusal
        final_stop = None if message.tool_calls or round_state.truncated else answers.final_stop(
            round_state.finish_reason, round_state.refusal, agent.config.max_tokens or None
        )
        if final_stop is not None:
            if message.content:
                history.append(message)
                step = AgentStep(message, usage, round_state.finish_reason)
                steps.append(step)
                await ctx.journal.round_done([message], step)
            yield done(final_stop.reason, final=message.content, error=final_stop.error)
            return

        # --- structured output: validated; an invalid answer is retried once
        structured: dict[str, Any] | None = None
        schema = agent.config.response_json_schema
        if schema and message.content and not message.tool_calls and not round_state.truncated:
            structured, problem = answers.parse_structured(message.content, schema)
            if problem is not None:
                if structured_retried:
                    yield done(StopReason.ERROR, error=(
                        f"the answer did not match the response JSON Schema after a retry: {problem}"
                    ))
                    return
                structured_retried = True
                retry_extra = [message, answers.correction(problem)]
                spans.event("round_retried", {"pilothouse.cause": answers.INVALID_STRUCTURED_OUTPUT})
                yield RoundRetried(1, answers.INVALID_STRUCTURED_OUTPUT, problem, agent.config.model)
                continue

        if not message.content and not message.tool_calls:
            # Neither text nor a usable call (also what a silently dropped
            # connection looks like): store nothing for this round.
            yield done(StopReason.NO_ACTION)
            return

        history.append(message)
        if message.tool_calls:
            yield ToolCallsStart(list(message.tool_calls))
            state = RoundState(message, usage, round_state.finish_reason,
                               [CallState(call) for call in message.tool_calls])
            async for item in complete(state, tool_phase_context()):
                yield item
        else:
            step = AgentStep(message, usage, round_state.finish_reason)
            steps.append(step)
            await ctx.journal.round_done([message], step)
        if control.stopped:
            final = stopped()
            if final is not None:
                yield final
            return

        if message.tool_calls:
            threshold = agent.config.compact_threshold
            if threshold and compaction.estimate_tokens(history) > threshold:
                summary = await _compact(model, agent, history)
                if summary is not None:
                    history[:] = [Message.user(summary)]
                    await ctx.journal.compacted(summary)
                    spans.event("compacted")
                    yield Compacted(summary)
            continue

        if round_state.truncated:
            yield done(
                StopReason.OUTPUT_LIMIT, final=message.content,
                error=f"the model's output passed the limit of {ctx.max_output_chars} characters",
            )
            return
        if control.steering.pending() and control.options.late_steering is LateSteeringPolicy.FOLLOW_UP:
            continue  # steering that came in during the last round gets an answer
        yield done(StopReason.TEXT_RESPONSE, final=message.content, structured=structured)
        return

    last = steps[-1].message.content if steps else ""
    yield done(StopReason.MAX_ITERATIONS, final=last)


async def _compact(model: ChatModel, agent: Agent, history: list[Message]) -> str | None:
    with spans.tracer.start_as_current_span("compact_history") as span:
        try:
            return await compaction.summarize(model, agent, history)
        except ModelError as exc:
            span.set_status(spans.Status(spans.StatusCode.ERROR, exc.message))
            return None


# --- The model stream ------------------------------------------------------


@dataclass(slots=True)
class _RoundState:
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


async def _model_round(
    agent: Agent,
    model: ChatModel,
    history: list[Message],
    ctx: LoopContext,
    state: _RoundState,
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
        with spans.chat_span(model.provider_name, model_name, ctx.session_id) as span:
            async for event in _stream_round(model, request, builder, state, ctx.control,
                                             ctx.max_output_chars):
                yield event
            spans.end_chat_span(
                span,
                response_model=state.response_model,
                finish_reason=state.finish_reason,
                usage=state.usage,
                time_to_first_chunk_s=(
                    None if state.first_chunk_at is None else state.first_chunk_at - state.started_at
                ),
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
    request: ChatRequest,
    builder: MessageBuilder,
    state: _RoundState,
    control: RunControl,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> AsyncIterator[Event]:
    """Events of one model stream. The stream is read by a pump task so a
    stop request can close it at once (the HTTP response is closed); past
    `max_output_chars` characters of output the stream is closed too (`truncated`)."""
    output = 0
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump = asyncio.create_task(_pump(model.stream(request), queue))
    remove_waker = on_stop(control, lambda: queue.put_nowait(_STOP))
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
                state.failure = item
                break
            chunk: ChatChunk = item  # type: ignore[assignment]
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
        if not pump.done():
            pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    if open_segment is TextStart:
        yield TextEnd()
    elif open_segment is ThinkingStart:
        yield ThinkingEnd()
