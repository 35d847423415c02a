"""Agents that call agents: the `delegate` tool.

An agent whose config names `delegates` (agents of the registry) or
`remote_delegates` (A2A agents, by agent card) gets one more tool,
`delegate`, with arguments `agent` (one of those names) and `task`. The
agent loop knows nothing of it: `Delegations` is the runtime's tool
dispatcher, and hands every other call to the real one (the ToolExecutor
client).

A call to a registry agent is a **child run**: a new session of that agent
(with the parent session's `created_by`), a run on it started through the
runtime like any other (`Runtime.start_run`), with `RunOptions.delegation`
naming the parent run, session and tool call (GetRun shows them). The
call's output is the child's final answer; a child that ends otherwise
(error, cancelled, out of rounds without an answer, ...) gives the call an
error result saying so. A call to a remote agent is an A2A task
(`pilothouse.runtime.remote_agents`).

While the child works, part of its events are forwarded into the parent's
log as `DelegationProgress` under the parent's tool call id, so the
parent's stream shows the child's progress and its event log stays small:
its run start, its text coalesced (one event per text segment, or per
`TEXT_CHUNK` characters), its tool calls and results, its approvals,
questions and decisions, its resumption, its own delegations' forwarded
events, and its `done` without the steps. The child's whole stream is one
Attach away (its session and run ids are in every forwarded event).

- **Cancellation.** A parent that stops (cancel, timeout, budget) cancels
  its tool calls; a delegation's cancellation cancels its child run
  (`Runtime.cancel`, the child's history stays valid) or its A2A task. A
  handover does not: the child is handed over on its own. A parent resumed
  after a crash or handover gives an in-flight delegation call the
  "interrupted" result of any non-idempotent tool; the child run goes on
  and ends on its own session.
- **Limits.** A run at depth `delegation_max_depth` (a child of a client's
  run is at depth 1) cannot delegate; one run may start at most
  `delegation_max_runs` children; with a `token_budget`, a child's budget
  is what the parent has left (its own tokens and its children's so far),
  and once the parent and its children together reach it the parent stops
  with BUDGET_EXCEEDED after the delegation's result is stored.
- **Who.** A child runs for its parent's principal (its session is that
  principal's; an agent the principal may not run refuses the delegation
  with the reason as the call's error).
- **Approvals inside a child** are the child's: its `approval_required`
  (and `question_asked`) is forwarded with the child's session and request
  id; answer with SubmitDecision on the child's session, or on the
  parent's, or on the parent's Steer stream: a request id no run of the
  session waits for is passed on to the session's delegations
  (`route_decision`).
- **Traces.** The child's task is created inside the parent's
  `execute_tool delegate` span, so the child's `invoke_agent` span (and
  everything under it) nests under that tool span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from pilothouse.errors import FailedPreconditionError, InvalidArgumentError, PilothouseError
from pilothouse.identity import Principal
from pilothouse.runtime import remote_agents
from pilothouse.runtime.agent import AgentConfig, RemoteDelegate
from pilothouse.runtime.control import DelegationLink, RunOptions
from pilothouse.runtime.events import (
    AgentResponse,
    ApprovalRequired,
    DecisionApplied,
    DelegationProgress,
    Done,
    Event,
    QuestionAsked,
    RunEvent,
    RunResumed,
    RunStarted,
    StopReason,
    TextDelta,
    TextEnd,
    ToolCallsStart,
    ToolResult,
)
from pilothouse.runtime.messages import ToolCall, Usage
from pilothouse.runtime.runs import Run
from pilothouse.runtime.tools import ToolAnswer, ToolContext, ToolDispatcher, ToolOutcome, ToolSpec

if TYPE_CHECKING:
    from pilothouse.runtime.events import Decision
    from pilothouse.runtime.runtime import Runtime

log = logging.getLogger(__name__)

#: The tool's name.
DELEGATE = "delegate"
#: Characters of a child's text forwarded in one event at most.
TEXT_CHUNK = 4096
#: The child events forwarded as they are (text is coalesced, `done` trimmed).
FORWARDED: tuple[type, ...] = (
    RunStarted, ToolCallsStart, ToolResult, ApprovalRequired, QuestionAsked, DecisionApplied,
    RunResumed, DelegationProgress,
)


def delegate_spec(config: AgentConfig, describe: Callable[[str], str]) -> ToolSpec | None:
    """The `delegate` tool of an agent with delegates (None without);
    `describe(name)` is a registry agent's description ("" if unknown)."""
    entries = [(name, describe(name)) for name in config.delegates]
    entries += [(d.name, d.description) for d in config.remote_delegates]
    if not entries:
        return None
    listing = "\n".join(f"- {name}: {text}" if text else f"- {name}" for name, text in entries)
    return ToolSpec(
        name=DELEGATE,
        description=(
            "Hand a task to another agent and wait for its answer. The agent starts a fresh "
            "conversation with its own tools: put everything it needs in `task`. "
            f"Agents:\n{listing}"
        ),
        parameters={
            "type": "object",
            "properties": {
                "agent": {
                    "type": "string",
                    "enum": [name for name, _ in entries],
                    "description": "The agent to hand the task to.",
                },
                "task": {
                    "type": "string",
                    "description": "The task, self-contained: the agent sees nothing else.",
                },
            },
            "required": ["agent", "task"],
            "additionalProperties": False,
        },
        metadata={"provider": "pilothouse-runtime"},
    )


def check_delegation(config: AgentConfig) -> None:
    """INVALID_ARGUMENT when an agent with delegates also names a tool
    `delegate`; FAILED_PRECONDITION (A2A_CLIENT_MISSING) for remote
    delegates when the a2a-sdk is not installed."""
    if not config.delegates and not config.remote_delegates:
        return
    if DELEGATE in config.tools:
        raise InvalidArgumentError.field(
            "config.tools", f"{DELEGATE!r} is the delegation tool of an agent with delegates"
        )
    if config.remote_delegates and not remote_agents.available():
        raise FailedPreconditionError(
            f"agent {config.name!r} names remote A2A delegates, but this server has no A2A "
            "client: install pilothouse[a2a]",
            reason="A2A_CLIENT_MISSING",
            metadata={"agent": config.name},
        )


def tokens(usage: Usage) -> int:
    return usage.total_tokens or usage.prompt_tokens + usage.completion_tokens


@dataclass(slots=True)
class _Ledger:
    """One parent run's delegations: how many it started, the tokens its
    children used, and the children running now (by tool call id)."""

    started: int = 0
    tokens: int = 0
    active: dict[str, Run] = field(default_factory=dict)


class _Refusal(Exception):
    """A delegation that cannot start: its text is the call's error."""


class Delegations:
    """The runtime's tool dispatcher (see the module docstring): `delegate`
    calls of agents with delegates become child runs or A2A tasks, every
    other call goes to `inner`."""

    def __init__(
        self,
        runtime: Runtime,
        inner: ToolDispatcher,
        *,
        max_depth: int = 3,
        max_runs: int = 8,
        remote: remote_agents.RemoteAgents | None = None,
    ) -> None:
        self.runtime = runtime
        self.inner = inner
        self.max_depth = max_depth
        self.max_runs = max_runs
        self.remote = remote
        self._ledgers: dict[str, _Ledger] = {}

    def run_ended(self, run: Run, *_: object) -> None:
        """A run-end observer: forget the run's delegations."""
        self._ledgers.pop(run.id, None)

    async def dispatch(
        self, call: ToolCall, context: ToolContext, answer: ToolAnswer | None = None
    ) -> ToolOutcome:
        if call.name != DELEGATE:
            return await self.inner.dispatch(call, context, answer)
        # The delegating agent as the run has it (its version, not the latest).
        agent = self.runtime.agents.cached(context.agent)
        if agent is None or (context.agent_version and agent.version != context.agent_version):
            try:
                agent = await self.runtime.agents.get(context.agent, version=context.agent_version)
            except PilothouseError as exc:
                return ToolOutcome(error=f"cannot delegate: {exc.message}")
        config = agent.config
        if not config.delegates and not config.remote_delegates:
            return await self.inner.dispatch(call, context, answer)
        try:
            name, task = _arguments(call, config)
            parent = self.runtime.scheduler.local(context.run_id)
            if parent is None:
                raise _Refusal(f"run {context.run_id} is not running here")
            link, budget = self._admit(parent, config)
        except _Refusal as refusal:
            return ToolOutcome(error=f"cannot delegate: {refusal}")
        span = trace.get_current_span()
        span.set_attribute("pilothouse.delegate.agent", name)
        span.set_attribute("pilothouse.delegate.depth", link.depth)
        remote = next((d for d in config.remote_delegates if d.name == name), None)
        ledger = self._ledgers.setdefault(parent.id, _Ledger())
        ledger.started += 1
        if remote is not None:
            outcome, used = await self._remote(parent, call, remote, task)
        else:
            outcome, used = await self._local(parent, call, context, name, task, link, budget)
        ledger.tokens += used
        self._check_budget(parent)
        return outcome

    # --- admission -------------------------------------------------------------------

    def _admit(self, parent: Run, config: AgentConfig) -> tuple[DelegationLink, int]:
        """The child's link and token budget (0: none); raises _Refusal
        past the depth, run or token limits."""
        depth = (parent.options.delegation.depth if parent.options.delegation else 0) + 1
        if depth > self.max_depth:
            raise _Refusal(
                f"this run is {depth - 1} delegations deep, the most a delegating run may be "
                f"is {self.max_depth - 1}; do the task yourself"
            )
        ledger = self._ledgers.get(parent.id)
        started = ledger.started if ledger is not None else 0
        if started >= self.max_runs:
            raise _Refusal(f"this run has delegated {started} tasks, the limit")
        budget = parent.options.token_budget
        left = 0
        if budget:
            left = budget - self._tokens_used(parent)
            if left <= 0:
                raise _Refusal(f"the run's token budget of {budget} is used up")
        link = DelegationLink(parent.id, parent.session_id, "", depth)
        return link, left

    def _tokens_used(self, parent: Run) -> int:
        """The parent's own tokens (rounds done and the round in progress)
        and its children's."""
        used = 0
        journal = self.runtime.scheduler.journal_of(parent.id)
        if journal is not None:
            used = tokens(journal.usage)
            if journal.round is not None:
                used += tokens(journal.round.usage)
        ledger = self._ledgers.get(parent.id)
        return used + (ledger.tokens if ledger is not None else 0)

    def _check_budget(self, parent: Run) -> None:
        budget = parent.options.token_budget
        if budget and self._tokens_used(parent) >= budget:
            parent.stop(
                StopReason.BUDGET_EXCEEDED,
                f"the run and its delegations used {self._tokens_used(parent)} tokens of its "
                f"budget of {budget}",
            )

    # --- a child run --------------------------------------------------------------------

    async def _local(
        self, parent: Run, call: ToolCall, context: ToolContext, name: str, task: str,
        link: DelegationLink, budget: int,
    ) -> tuple[ToolOutcome, int]:
        runtime = self.runtime
        # The child runs for the parent's principal: its session is theirs,
        # and an agent they may not run refuses them here too.
        caller = (Principal(context.principal, frozenset(context.principal_roles), "delegation")
                  if context.principal else None)
        try:
            parent_session = await runtime.get_session(parent.session_id)
            session = await runtime.create_session(name, parent_session.created_by, caller)
            options = RunOptions(
                token_budget=budget,
                decision_timeout_s=parent.options.decision_timeout_s,
                delegation=DelegationLink(link.parent_run_id, link.parent_session_id, call.id,
                                          link.depth),
            )
            where, _ = await runtime.start_run(
                session.id, task, context.agent, options,
                idempotency_key=f"delegate:{parent.id}:{call.id}", caller=caller,
            )
        except PilothouseError as exc:
            return ToolOutcome(error=f"cannot delegate to {name}: {exc.message}"), 0
        if not isinstance(where, Run):  # a new session's run starts here
            return ToolOutcome(error=f"cannot delegate to {name}: the run did not start here"), 0
        child = where
        trace.get_current_span().set_attribute("pilothouse.delegate.run_id", child.id)
        ledger = self._ledgers.setdefault(parent.id, _Ledger())
        ledger.active[call.id] = child
        forwarding = asyncio.create_task(self._forward(parent, child, call.id, name))
        try:
            response = await child.result()
            await forwarding
        except asyncio.CancelledError:
            if parent.control.stop_reason is not StopReason.HANDOVER:
                await asyncio.shield(self._cancel(child, parent))
            forwarding.cancel()
            raise
        except PilothouseError as exc:  # handed over while we waited
            forwarding.cancel()
            return ToolOutcome(error=f"the delegated run {child.id} moved: {exc.message}"), 0
        finally:
            ledger.active.pop(call.id, None)
        return outcome_of(name, response), tokens(response.usage)

    async def _cancel(self, child: Run, parent: Run) -> None:
        reason = f"its parent run {parent.id} stopped ({parent.control.stop_message or 'cancelled'})"
        try:
            await self.runtime.cancel(child.session_id, child.id, reason)
        except PilothouseError as exc:
            log.warning("run %s: cancelling child run %s failed: %s", parent.id, child.id,
                        exc.message)
            child.stop(StopReason.CANCELLED, reason)
            await child.wait()

    async def _forward(self, parent: Run, child: Run, call_id: str, name: str) -> None:
        """The child's events (part of them, see the module docstring) into
        the parent's log, until the child's `done`."""
        text: list[str] = []
        size = 0
        last: RunEvent | None = None

        def put(event: RunEvent) -> None:
            if not parent.log.closed:
                parent.log.append(DelegationProgress(call_id, name, child.session_id, child.id, event))

        def flush() -> None:
            nonlocal size
            if text and last is not None:
                put(RunEvent(last.session_id, last.run_id, last.sequence, last.time,
                             TextDelta("".join(text))))
            text.clear()
            size = 0

        with contextlib.suppress(PilothouseError):  # a handed-over child ends its stream
            async for recorded in child.events():
                event = recorded.event
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    size += len(event.text)
                    last = recorded
                    if size >= TEXT_CHUNK:
                        flush()
                    continue
                if isinstance(event, TextEnd):
                    flush()
                elif isinstance(event, FORWARDED):
                    flush()
                    put(recorded)
                elif isinstance(event, Done):
                    flush()
                    put(_trimmed(recorded, event.response))
        flush()

    # --- a remote A2A agent ------------------------------------------------------------

    async def _remote(
        self, parent: Run, call: ToolCall, delegate: RemoteDelegate, task: str
    ) -> tuple[ToolOutcome, int]:
        if self.remote is None:
            return ToolOutcome(error="remote A2A agents need the a2a-sdk package (pilothouse[a2a])"), 0

        def progress(task_id: str, event: Event, sequence: int, at: float) -> None:
            if not parent.log.closed:
                parent.log.append(DelegationProgress(
                    call.id, delegate.name, "", task_id, RunEvent("", task_id, sequence, at, event)
                ))

        return await self.remote.run(delegate, task, progress, parent_run_id=parent.id), 0

    # --- decisions ----------------------------------------------------------------------

    def route_decision(self, session_id: str, decision: Decision) -> Run | None:
        """Pass a decision to the delegation (at any depth) of the
        session's runs here that waits for its request id; the child run
        that took it, or None."""
        pending: list[Run] = []
        for parent_id, ledger in self._ledgers.items():
            parent = self.runtime.scheduler.local(parent_id)
            if parent is not None and parent.session_id == session_id:
                pending.extend(ledger.active.values())
        seen: set[str] = set()
        while pending:
            child = pending.pop()
            if child.id in seen:
                continue
            seen.add(child.id)
            if decision.request_id in child.control.pending_requests():
                child.decide(decision)
                return child
            below = self._ledgers.get(child.id)
            if below is not None:
                pending.extend(below.active.values())
        return None


def _arguments(call: ToolCall, config: AgentConfig) -> tuple[str, str]:
    """(agent, task) of a `delegate` call; raises _Refusal for bad ones."""
    try:
        args: Any = json.loads(call.arguments or "{}")
    except (ValueError, RecursionError):
        raise _Refusal("the arguments must be a JSON object with `agent` and `task`") from None
    if not isinstance(args, dict):
        raise _Refusal("the arguments must be a JSON object with `agent` and `task`")
    name, task = args.get("agent"), args.get("task")
    names = [*config.delegates, *(d.name for d in config.remote_delegates)]
    if not isinstance(name, str) or name not in names:
        raise _Refusal(f"`agent` must be one of: {', '.join(names)}")
    if not isinstance(task, str) or not task.strip():
        raise _Refusal("`task` must be a non-empty string")
    return name, task


def outcome_of(name: str, response: AgentResponse) -> ToolOutcome:
    """The delegate call's result: the child's answer, or why it has none."""
    stop = response.stop_reason
    if response.final_response and stop in (StopReason.TEXT_RESPONSE, StopReason.MAX_ITERATIONS):
        return ToolOutcome(output=response.final_response)
    why = f": {response.error}" if response.error else ""
    return ToolOutcome(error=f"agent {name} gave no answer: its run ended with {stop.value}{why}")


def _trimmed(recorded: RunEvent, response: AgentResponse) -> RunEvent:
    """A child's `done` without its steps (they stay in the child's log)."""
    trimmed = AgentResponse(
        response.final_response, response.iterations, response.stop_reason, [], response.model,
        error=response.error, usage=response.usage,
    )
    return RunEvent(recorded.session_id, recorded.run_id, recorded.sequence, recorded.time,
                    Done(trimmed))
