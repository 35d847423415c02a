"""The tool phase of a round: every call of the assistant message runs
concurrently, approvals and questions wait for decisions, and every step
is written to the run's journal before it has effects, so a run resumed
after a crash knows which calls ran.

Each call has a durable `CallState`: `pending` (not started), `awaiting`
(an approval is pending), `asking` (a question is pending: the runtime's
`ask_user`, or a tool that asked before it could finish), `dispatched`
(sent to its ToolExecutor, no result yet) or `done` (it has its result).
A call is journalled as `dispatched` before its RPC is sent. On resume,
`done` results are kept, `dispatched` calls are sent again only when their
tool is idempotent (otherwise their result says they were interrupted and
may or may not have run), pending approvals and questions are asked again
with the same request ids, and decisions stored meanwhile apply at once.

Results come out in completion order; the caller appends them to the
history in call order. A stop request cancels the calls still running
(their RPCs are cancelled) and gives each a "cancelled" result, so the
stored history never holds a tool call without its result; a handover
(StopReason.HANDOVER) leaves them unanswered in the journal instead, for
the replica that resumes the run.

Hooks (`ToolPhaseContext.hooks`): `before_tool_call` decides a new call's
first state in `prepare` (a denial settles it with the denial as its
result, an ask makes it wait for approval, a rewrite replaces its
arguments before it is journalled), and `after_tool_call` sees each
result that came back from a ToolExecutor before it is journalled. A hook
that fails settles its call with an error result and stops the run
(STOP_REASON_ERROR): the round is stored with a result for every call.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pilothouse import jsontext
from pilothouse.runtime import spans
from pilothouse.runtime.agent import Agent, ApprovalPolicy
from pilothouse.runtime.control import RunControl
from pilothouse.runtime.eventcodec import decode_value, encode_value
from pilothouse.runtime.events import (
    ApprovalRequired,
    Decision,
    DecisionApplied,
    Event,
    QuestionAsked,
    StopReason,
    ToolResult,
    Verdict,
)
from pilothouse.runtime.hookchain import RunHooks
from pilothouse.runtime.hooks import HookError
from pilothouse.runtime.messages import Message, ToolCall, Usage
from pilothouse.runtime.runmetrics import NO_METRICS, RunMetrics
from pilothouse.runtime.tools import (
    ASK_USER,
    ToolAnswer,
    ToolContext,
    ToolDispatcher,
    ToolQuestion,
)

#: Questions one tool call may ask before its answer.
MAX_TOOL_QUESTIONS = 3
#: How long an approval or question waits by default, seconds.
DEFAULT_DECISION_TIMEOUT_S = 600.0
#: The result of a call that was running when its process stopped.
INTERRUPTED_RESULT = (
    "interrupted: the server running this call stopped before its result was stored; "
    "the call may or may not have run"
)

PENDING, AWAITING, ASKING, DISPATCHED, DONE = "pending", "awaiting", "asking", "dispatched", "done"


def new_request_id() -> str:
    """A decision request id, unique within the run (and beyond)."""
    return f"req_{uuid.uuid4().hex[:20]}"


@dataclass(slots=True)
class PendingRequest:
    """An approval or question waiting for a decision; `expire_time` is
    Unix seconds."""

    request_id: str
    kind: str  # "approval" or "question"
    expire_time: float
    reason: str = ""
    question: str = ""
    options: tuple[str, ...] = ()
    multi_select: bool = False


@dataclass(slots=True)
class CallState:
    """One call of the round in progress (see the module docstring)."""

    call: ToolCall
    status: str = PENDING
    result: ToolResult | None = None
    request: PendingRequest | None = None
    #: A decision that arrived while no process ran the run.
    decision: Decision | None = None
    #: The latest answer to a question the tool asked, and how many it asked.
    answer: ToolAnswer | None = None
    questions: int = 0


@dataclass(slots=True)
class RoundState:
    """The round whose tool phase is in progress: the assistant message,
    the round's usage and finish reason, and each call's state."""

    message: Message
    usage: Usage
    finish_reason: str
    calls: list[CallState] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        return any(c.status in (AWAITING, ASKING) for c in self.calls)

    def results(self) -> list[ToolResult]:
        """The results, in call order (only calls that have one)."""
        return [c.result for c in self.calls if c.result is not None]


class ToolJournal(Protocol):
    """Where the tool phase writes the round's state before acting on it."""

    async def tool_round(self, state: RoundState) -> None: ...


@dataclass(slots=True)
class ToolPhaseContext:
    """What the tool phase needs of its run. `remember_approval(tool)`
    persists an "approve always"; `resumed` is True when the round comes
    from a checkpoint (its calls' states are restored)."""

    agent: Agent
    dispatcher: ToolDispatcher
    tool_context: ToolContext
    control: RunControl
    journal: ToolJournal
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_S
    remember_approval: Callable[[str], Awaitable[None]] | None = None
    resumed: bool = False
    hooks: RunHooks | None = None
    metrics: RunMetrics = NO_METRICS


class _Stop:
    """Sentinel put on the phase's queue when a stop is requested."""


_STOP = _Stop()


def needs_approval(agent: Agent, call: ToolCall, approved: set[str]) -> str | None:
    """Why `call` needs a decision, or None when it can run. A tool its
    ToolExecutor declares as requiring approval always needs one, whatever
    the agent's policy; "approve always" for the session lifts it."""
    if call.name == ASK_USER.name or call.name in approved:
        return None
    spec = next((t for t in agent.tools if t.name == call.name), None)
    if spec is not None and spec.requires_approval:
        return "the ToolExecutor declares that this tool requires approval"
    policy = agent.config.approval_policy
    if policy is ApprovalPolicy.NEVER:
        return None
    if policy is ApprovalPolicy.ALWAYS:
        return "the agent's policy requires approval of every tool call"
    if call.name in agent.config.approval_required_tools:
        return "the agent's policy requires approval of this tool"
    return None


def on_stop(control: RunControl, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` once when a stop is requested (at once if it already
    was); returns a function that removes it."""
    if control.stopped:
        callback()
        return lambda: None
    waiter = asyncio.ensure_future(control.stop_event.wait())
    waiter.add_done_callback(lambda f: None if f.cancelled() else callback())

    def remove() -> None:
        waiter.cancel()

    return remove


async def run_tool_phase(
    state: RoundState, ctx: ToolPhaseContext
) -> AsyncIterator[Event]:
    """Run the round's calls; yield ToolResult (completion order) and
    approval / question / decision events as they happen. Every call ends
    with a result unless the stop is a handover."""
    control = ctx.control
    queue: asyncio.Queue[object] = asyncio.Queue()
    started = [time.perf_counter()] * len(state.calls)
    phase = _Phase(state, ctx, queue)
    await phase.prepare()
    # Calls settled before anything ran (unknown tools, bad ask_user
    # arguments, interrupted calls of a resumed round) and, on resume, the
    # results already known: the round is restated.
    for call_state in state.calls:
        if call_state.status == DONE and call_state.result is not None:
            yield call_state.result

    async def run_one(index: int) -> None:
        started[index] = time.perf_counter()
        result = await phase.run(index)
        queue.put_nowait(("result", index, result))

    tasks = [
        asyncio.create_task(run_one(i)) for i, c in enumerate(state.calls) if c.status != DONE
    ]
    remaining = len(tasks)
    remove_waker = on_stop(control, lambda: queue.put_nowait(_STOP))
    try:
        while remaining:
            item = await queue.get()
            if item is _STOP:
                break
            if isinstance(item, tuple):
                _, index, result = item
                remaining -= 1
                await phase.finished(index, result, last=remaining == 0)
                yield result
            else:
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
        if isinstance(item, tuple) and state.calls[item[1]].status != DONE:
            _, index, result = item
            await phase.finished(index, result, last=False)
            yield result
    if control.stop_reason is StopReason.HANDOVER:
        return  # unanswered calls stay in the journal for the next owner
    reason = control.stop_message or (control.stop_reason.value if control.stop_reason else "")
    for index, call_state in enumerate(state.calls):
        if call_state.status != DONE:
            elapsed = int((time.perf_counter() - started[index]) * 1000)
            error = f"cancelled: {reason}" if reason else "cancelled"
            result = ToolResult(call_state.call.id, call_state.call.name, error=error, duration_ms=elapsed)
            call_state.status, call_state.result = DONE, result
            yield result


class _Phase:
    """The calls of one tool phase and their journalled states."""

    def __init__(self, state: RoundState, ctx: ToolPhaseContext, queue: asyncio.Queue[object]) -> None:
        self.state = state
        self.ctx = ctx
        self.queue = queue
        self.allowed = {t.name for t in ctx.agent.tools}
        self.idempotent = {t.name for t in ctx.agent.tools if t.idempotent}

    async def prepare(self) -> None:
        """Decide each call's first state and journal them all at once,
        before anything runs: calls that need a decision wait for it,
        the others are dispatched."""
        failure: HookError | None = None
        for call_state in self.state.calls:
            call = call_state.call
            if call_state.status == DISPATCHED and self.ctx.resumed:
                if call.name not in self.idempotent:
                    call_state.status = DONE
                    call_state.result = ToolResult(call.id, call.name, error=INTERRUPTED_RESULT)
                continue
            if call_state.status != PENDING:
                continue
            if not call.name:
                call_state.status = DONE
                call_state.result = ToolResult(
                    call.id, call.name, error="this tool call names no tool (its function name is empty)"
                )
            elif call.name not in self.allowed:
                call_state.status = DONE
                call_state.result = ToolResult(
                    call.id, call.name,
                    error=f"tool {call.name!r} is not available to agent {self.ctx.agent.name!r}",
                )
            elif failure is not None:
                call_state.status = DONE
                call_state.result = ToolResult(call.id, call.name, error=f"cancelled: {failure.message}")
            elif call.name == ASK_USER.name:
                question = _parse_ask_user(call)
                if isinstance(question, str):
                    call_state.status = DONE
                    call_state.result = ToolResult(call.id, call.name, error=question)
                else:
                    call_state.status = ASKING
                    call_state.request = self._question_request(question)
            else:
                # --- hooks: before_tool_call ------------------------------
                hooked: str | None = None
                if self.ctx.hooks is not None and self.ctx.hooks.has("before_tool_call"):
                    try:
                        verdict = await self.ctx.hooks.before_tool_call(call)
                    except HookError as exc:
                        failure = exc
                        call_state.status = DONE
                        call_state.result = ToolResult(call.id, call.name, error=exc.message)
                        continue
                    if verdict.deny is not None:
                        call_state.status = DONE
                        call_state.result = ToolResult(call.id, call.name, error=verdict.deny)
                        continue
                    if verdict.arguments is not None:
                        call.arguments = verdict.arguments  # the stored call says what runs
                    hooked = verdict.ask
                why = needs_approval(self.ctx.agent, call, self.ctx.control.approved_tools) or hooked
                if why:
                    call_state.status = AWAITING
                    call_state.request = PendingRequest(
                        new_request_id(), "approval", time.time() + self._timeout(), reason=why
                    )
                else:
                    call_state.status = DISPATCHED
        await self.ctx.journal.tool_round(self.state)
        if failure is not None:
            self.ctx.control.request_stop(StopReason.ERROR, failure.message)

    def _timeout(self) -> float:
        return self.ctx.control.options.decision_timeout_s or self.ctx.decision_timeout_s

    def _question_request(self, question: ToolQuestion) -> PendingRequest:
        return PendingRequest(
            new_request_id(), "question", time.time() + self._timeout(),
            question=question.question, options=tuple(question.options),
            multi_select=question.multi_select,
        )

    async def finished(self, index: int, result: ToolResult, *, last: bool) -> None:
        """Journal a result, unless it is the round's last: the round's
        checkpoint that follows at once stores it with the history."""
        call_state = self.state.calls[index]
        call_state.status, call_state.result = DONE, result
        call_state.request = None
        if not last:
            await self.ctx.journal.tool_round(self.state)

    async def run(self, index: int) -> ToolResult:
        call_state = self.state.calls[index]
        call = call_state.call
        start = time.perf_counter()
        outcome = "cancelled"  # unless the call comes to an end
        try:
            with spans.tool_span(call.name, call.id, self.ctx.tool_context.session_id) as span:
                output, error = await self._drive(call_state)
                spans.end_tool_span(span, error)
                outcome = "ok" if error is None else "error"
                duration_ms = int((time.perf_counter() - start) * 1000)
                if error is not None:
                    result = ToolResult(call.id, call.name, error=error, duration_ms=duration_ms)
                else:
                    result = ToolResult(call.id, call.name, output=output or "", duration_ms=duration_ms)
                # --- hooks: after_tool_call, before the result is journalled ---
                if self.ctx.hooks is not None and self.ctx.hooks.has("after_tool_call"):
                    try:
                        result = await self.ctx.hooks.after_tool_call(call, result)
                    except HookError as exc:
                        self.ctx.control.request_stop(StopReason.ERROR, exc.message)
                        return ToolResult(call.id, call.name,
                                          error=f"{exc.message}; the result was withheld",
                                          duration_ms=duration_ms)
        except Exception:
            outcome = "error"
            raise
        finally:
            self.ctx.metrics.tool_call(call.name, outcome, time.perf_counter() - start)
        return result

    async def _drive(self, call_state: CallState) -> tuple[str | None, str | None]:
        """Take the call from its state to its output or error."""
        call = call_state.call
        if call_state.status == DONE and call_state.result is not None:
            return call_state.result.output, call_state.result.error
        if call_state.status == AWAITING:
            denial = await self._approval(call_state)
            if denial is not None:
                return None, denial
            call_state.status = DISPATCHED
            await self.ctx.journal.tool_round(self.state)
        if call.name == ASK_USER.name:
            return await self._ask_user(call_state)
        if call_state.status == ASKING:
            if not await self._answer_tool_question(call_state):
                return None, self._no_answer()
        return await self._dispatch(call_state)

    async def _dispatch(self, call_state: CallState) -> tuple[str | None, str | None]:
        """Dispatch; while the tool answers with a question, ask the user
        and dispatch again with the answer (at most MAX_TOOL_QUESTIONS)."""
        call = call_state.call
        while True:
            outcome = await self.ctx.dispatcher.dispatch(call, self.ctx.tool_context, call_state.answer)
            if outcome.question is None:
                return outcome.output, outcome.error
            if call_state.questions >= MAX_TOOL_QUESTIONS:
                return None, f"tool {call.name!r} asked more than {MAX_TOOL_QUESTIONS} questions"
            call_state.questions += 1
            call_state.status = ASKING
            call_state.request = self._question_request(outcome.question)
            await self.ctx.journal.tool_round(self.state)
            if not await self._answer_tool_question(call_state):
                return None, self._no_answer()

    async def _answer_tool_question(self, call_state: CallState) -> bool:
        """Ask the pending question of a tool; store the answer and mark the
        call dispatched again. False when no answer came in time."""
        decision = await self._wait(call_state)
        if decision is None:
            return False
        call_state.answer = ToolAnswer(decision.selected_options, decision.text)
        call_state.status, call_state.request = DISPATCHED, None
        await self.ctx.journal.tool_round(self.state)
        return True

    async def _approval(self, call_state: CallState) -> str | None:
        """Wait for a decision on the call; the denial text, or None to run
        it (with edited arguments when the decision carries them)."""
        call = call_state.call
        request = call_state.request
        assert request is not None
        decision = await self._wait(call_state)
        if decision is None:
            decision = Decision(request.request_id, Verdict.DENY, f"no decision within {self._timeout():g}s")
            self.queue.put_nowait(DecisionApplied(request.request_id, decision))
        spans.event("approval_decided", {"pilothouse.verdict": decision.verdict.value})
        self.ctx.metrics.approval_decided(call.name, decision.verdict.value)
        if decision.verdict is Verdict.APPROVE_ALWAYS:
            self.ctx.control.approved_tools.add(call.name)
            if self.ctx.remember_approval is not None:
                await self.ctx.remember_approval(call.name)
        if decision.verdict is Verdict.DENY:
            reason = f": {decision.reason}" if decision.reason else ""
            return f"the user denied this call to {call.name}{reason}"
        if decision.edited_arguments:
            call.arguments = decision.edited_arguments  # the stored call says what ran
        return None

    async def _wait(self, call_state: CallState) -> Decision | None:
        """Emit the call's pending request and wait for its decision (one
        stored while the run had no process applies at once); None when
        none came before the request expired."""
        request = call_state.request
        assert request is not None
        call = call_state.call
        control = self.ctx.control
        if request.kind == "approval":
            self.queue.put_nowait(ApprovalRequired(request.request_id, call, request.reason, request.expire_time))
            spans.event("approval_wait_started", {"pilothouse.reason": request.reason})
        else:
            self.queue.put_nowait(QuestionAsked(
                request.request_id, request.question, list(request.options), request.multi_select,
                request.expire_time,
            ))
            spans.event("question_wait_started")
        future = control.expect(request.request_id, request.kind, request.options, request.multi_select)
        try:
            if call_state.decision is not None:
                decision: Decision | None = call_state.decision
                call_state.decision = None
            else:
                try:
                    decision = await asyncio.wait_for(future, max(request.expire_time - time.time(), 0))
                except TimeoutError:
                    decision = None
        finally:
            control.forget(request.request_id)
        if decision is not None:
            self.queue.put_nowait(DecisionApplied(request.request_id, decision))
        return decision

    def _no_answer(self) -> str:
        return f"the user did not answer within {self._timeout():g}s"

    async def _ask_user(self, call_state: CallState) -> tuple[str | None, str | None]:
        """The runtime's `ask_user` tool: the answer as JSON."""
        decision = await self._wait(call_state)
        if decision is None:
            return None, self._no_answer()
        answer: dict[str, object] = {}
        if decision.selected_options:
            answer["selected_options"] = list(decision.selected_options)
        if decision.text:
            answer["text"] = decision.text
        return json.dumps(answer, ensure_ascii=False), None


def _parse_ask_user(call: ToolCall) -> ToolQuestion | str:
    """The question of an `ask_user` call, or the error text for the model."""
    try:
        args = jsontext.loads(call.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("the arguments must be a JSON object")
        question = args["question"]
        options = tuple(str(o) for o in args.get("options", []))
        multi = bool(args.get("multi_select", False))
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return f"invalid arguments for ask_user: {exc}"
    return ToolQuestion(question, options, multi)


# --- The round state as JSON (the run record's checkpoint state) ------------


def round_to_json(state: RoundState) -> dict[str, Any]:
    return encode_value(state)


def round_from_json(data: dict[str, Any]) -> RoundState:
    return decode_value(RoundState, data)
