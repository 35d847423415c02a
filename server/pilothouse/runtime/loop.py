"""The agent loop: model rounds, steering, tool phases and checkpoints.

`run_agent` drives up to `max_iterations` model rounds on a history it
mutates in place and yields the run's events, ending with exactly one
`Done` (or nothing more after a handover stop):

- Before each round: a stop request ends the run (CANCELLED, TIMEOUT), the
  token budget is checked (BUDGET_EXCEEDED), and queued steering messages
  are appended as user messages, each with `UserSteered`, and
  checkpointed.
- The model output streams (`pilothouse.runtime.modelround`) as
  Text*/Thinking* segments, one open at a time;
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

from collections.abc import AsyncIterator
from typing import Any

from pilothouse.runtime import answers, compaction, spans
from pilothouse.runtime.agent import Agent
from pilothouse.runtime.control import LateSteeringPolicy
from pilothouse.runtime.events import (
    AgentResponse,
    AgentStep,
    Compacted,
    ContextUsage,
    Done,
    Event,
    RoundRetried,
    StopReason,
    ToolCallsComplete,
    ToolCallsStart,
    UsageReported,
    UserSteered,
)
from pilothouse.runtime.hooks import HookError, ModelResponse, Stop
from pilothouse.runtime.loopcontext import (
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_STREAM_RETRIES,
    LoopContext,
    LoopJournal,
    NullJournal,
    Resume,
)
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.model.base import ChatModel, ModelError
from pilothouse.runtime.model.builder import MessageBuilder
from pilothouse.runtime.modelround import RoundOutcome, model_round
from pilothouse.runtime.toolphase import (
    DEFAULT_DECISION_TIMEOUT_S,
    CallState,
    RoundState,
    ToolPhaseContext,
    run_tool_phase,
)
from pilothouse.runtime.tools import ToolContext, ToolDispatcher

#: Context window assumed when the agent does not declare one, in tokens.
DEFAULT_CONTEXT_WINDOW = 128_000

__all__ = [
    "DEFAULT_DECISION_TIMEOUT_S",
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_STREAM_RETRIES",
    "LoopContext",
    "LoopJournal",
    "NullJournal",
    "Resume",
    "run_agent",
]


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
                                     ctx.principal, ctx.principal_roles, agent.version),
            control=control,
            journal=ctx.journal,
            decision_timeout_s=ctx.decision_timeout_s,
            remember_approval=ctx.remember_approval,
            hooks=ctx.hooks,
            metrics=ctx.metrics,
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
            ctx.metrics.steered(agent.name)
            yield UserSteered(content, sender)
        if steered:
            await ctx.journal.steered(steered)

        # --- One model round, retried when its stream fails -------------
        round_state = RoundOutcome()
        builder = MessageBuilder()
        seen = [*history, *retry_extra] if retry_extra else history
        retry_extra = []
        async for part in model_round(agent, model, seen, ctx, round_state):
            if isinstance(part, MessageBuilder):
                builder = part
            else:
                yield part
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
                    ctx.metrics.compacted(agent.name)
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
