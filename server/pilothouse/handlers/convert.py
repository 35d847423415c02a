"""Translate between the runtime's types and `pilothouse.v1` protobuf
messages. Pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime import events as ev
from pilothouse.runtime.agent import (
    NAME_PATTERN as AGENT_NAME_PATTERN,
    Agent,
    AgentConfig,
    ApprovalPolicy,
    ModelOverrides,
)
from pilothouse.runtime.control import (
    ActiveRunPolicy,
    DisconnectPolicy,
    LateSteeringPolicy,
    RunOptions,
)
from pilothouse.runtime.events import Decision, Verdict
from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.model.base import ReasoningEffort
from pilothouse.runtime.store.base import (
    INTERRUPTED,
    RunRecord,
    RunStatus,
    SessionMatch,
    SessionRecord,
    SessionState,
)
from pilothouse.v1 import (
    agent_pb2,
    event_pb2,
    message_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
    tool_pb2,
)

_ROLES = {
    Role.SYSTEM: message_pb2.ROLE_SYSTEM,
    Role.USER: message_pb2.ROLE_USER,
    Role.ASSISTANT: message_pb2.ROLE_ASSISTANT,
    Role.TOOL: message_pb2.ROLE_TOOL,
}
_STATES = {
    SessionState.OPEN: session_pb2.SESSION_STATE_OPEN,
    SessionState.CLOSED: session_pb2.SESSION_STATE_CLOSED,
}
_STOP_REASONS = {
    ev.StopReason.TEXT_RESPONSE: event_pb2.STOP_REASON_TEXT_RESPONSE,
    ev.StopReason.MAX_ITERATIONS: event_pb2.STOP_REASON_MAX_ITERATIONS,
    ev.StopReason.NO_ACTION: event_pb2.STOP_REASON_NO_ACTION,
    ev.StopReason.ERROR: event_pb2.STOP_REASON_ERROR,
    ev.StopReason.CANCELLED: event_pb2.STOP_REASON_CANCELLED,
    ev.StopReason.TIMEOUT: event_pb2.STOP_REASON_TIMEOUT,
    ev.StopReason.BUDGET_EXCEEDED: event_pb2.STOP_REASON_BUDGET_EXCEEDED,
    ev.StopReason.INTERRUPTED: event_pb2.STOP_REASON_INTERRUPTED,
    ev.StopReason.OUTPUT_LIMIT: event_pb2.STOP_REASON_OUTPUT_LIMIT,
    ev.StopReason.GUARDRAIL: event_pb2.STOP_REASON_GUARDRAIL,
    ev.StopReason.MAX_TOKENS: event_pb2.STOP_REASON_MAX_TOKENS,
    ev.StopReason.CONTENT_FILTER: event_pb2.STOP_REASON_CONTENT_FILTER,
    ev.StopReason.REFUSAL: event_pb2.STOP_REASON_REFUSAL,
}
_STOP_REASON_BY_VALUE = {reason.value: proto for reason, proto in _STOP_REASONS.items()}
_APPROVAL_POLICIES = {
    ApprovalPolicy.DEFAULT: agent_pb2.APPROVAL_POLICY_UNSPECIFIED,
    ApprovalPolicy.NEVER: agent_pb2.APPROVAL_POLICY_NEVER,
    ApprovalPolicy.ALWAYS: agent_pb2.APPROVAL_POLICY_ALWAYS,
}
_APPROVAL_POLICY_OF = {proto: policy for policy, proto in _APPROVAL_POLICIES.items()}
_REASONING_EFFORTS = {
    ReasoningEffort.DEFAULT: agent_pb2.REASONING_EFFORT_UNSPECIFIED,
    ReasoningEffort.NONE: agent_pb2.REASONING_EFFORT_NONE,
    ReasoningEffort.LOW: agent_pb2.REASONING_EFFORT_LOW,
    ReasoningEffort.MEDIUM: agent_pb2.REASONING_EFFORT_MEDIUM,
    ReasoningEffort.HIGH: agent_pb2.REASONING_EFFORT_HIGH,
}
_REASONING_EFFORT_OF = {proto: effort for effort, proto in _REASONING_EFFORTS.items()}
_VERDICTS = {
    Verdict.NONE: event_pb2.VERDICT_UNSPECIFIED,
    Verdict.APPROVE: event_pb2.VERDICT_APPROVE,
    Verdict.DENY: event_pb2.VERDICT_DENY,
    Verdict.APPROVE_ALWAYS: event_pb2.VERDICT_APPROVE_ALWAYS,
}
_VERDICT_OF = {proto: verdict for verdict, proto in _VERDICTS.items()}
#: Keyed by int: a request may carry a value this build does not know.
_SESSION_STATE_OF: dict[int, SessionState] = {proto: state for state, proto in _STATES.items()}
_DISCONNECT = {
    run_service_pb2.DISCONNECT_POLICY_UNSPECIFIED: DisconnectPolicy.CONTINUE,
    run_service_pb2.DISCONNECT_POLICY_CONTINUE: DisconnectPolicy.CONTINUE,
    run_service_pb2.DISCONNECT_POLICY_CANCEL: DisconnectPolicy.CANCEL,
}
_ACTIVE_RUN = {
    run_service_pb2.ACTIVE_RUN_POLICY_UNSPECIFIED: ActiveRunPolicy.REJECT,
    run_service_pb2.ACTIVE_RUN_POLICY_REJECT: ActiveRunPolicy.REJECT,
    run_service_pb2.ACTIVE_RUN_POLICY_ENQUEUE: ActiveRunPolicy.ENQUEUE,
    run_service_pb2.ACTIVE_RUN_POLICY_INTERRUPT: ActiveRunPolicy.INTERRUPT,
    run_service_pb2.ACTIVE_RUN_POLICY_STEER: ActiveRunPolicy.STEER,
}
_LATE_STEERING = {
    run_service_pb2.LATE_STEERING_POLICY_UNSPECIFIED: LateSteeringPolicy.FOLLOW_UP,
    run_service_pb2.LATE_STEERING_POLICY_FOLLOW_UP: LateSteeringPolicy.FOLLOW_UP,
    run_service_pb2.LATE_STEERING_POLICY_RETURN: LateSteeringPolicy.RETURN,
}


def _seconds(duration: duration_pb2.Duration, field: str) -> float | None:
    """A set, positive Duration in seconds; None when unset or zero."""

    value = duration.ToNanoseconds() / 1e9
    if value < 0:
        raise InvalidArgumentError.field(field, "must not be negative")
    return value or None


def options_from_proto(options: run_service_pb2.RunOptions, field: str = "options") -> RunOptions:
    """Domain run options; INVALID_ARGUMENT for unknown enum values or
    negative durations."""

    for name, table, value in (
        ("on_disconnect", _DISCONNECT, options.on_disconnect),
        ("if_active", _ACTIVE_RUN, options.if_active),
        ("late_steering", _LATE_STEERING, options.late_steering),
    ):
        if value not in table:
            raise InvalidArgumentError.field(f"{field}.{name}", f"unknown value {value}")
    if options.agent and not AGENT_NAME_PATTERN.match(options.agent):
        raise InvalidArgumentError.field(
            f"{field}.agent", "must be an agent name: 1-64 characters of letters, digits, "
            "'_', '.', '-', starting with a letter",
        )
    return RunOptions(
        on_disconnect=_DISCONNECT[options.on_disconnect],
        if_active=_ACTIVE_RUN[options.if_active],
        late_steering=_LATE_STEERING[options.late_steering],
        timeout_s=_seconds(options.timeout, f"{field}.timeout"),
        token_budget=options.token_budget,
        decision_timeout_s=_seconds(options.decision_timeout, f"{field}.decision_timeout"),
        model_overrides=(
            overrides_from_proto(options.overrides, f"{field}.overrides")
            if options.HasField("overrides")
            else None
        ),
        agent=options.agent,
    )


def _optional(message: Any, name: str) -> Any:
    """A proto3 `optional` field's value, None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def overrides_from_proto(overrides: agent_pb2.ModelOverrides, field: str) -> ModelOverrides:
    """Domain model overrides; INVALID_ARGUMENT for an unknown reasoning
    effort (the values themselves are checked against the agent)."""
    effort = overrides.reasoning_effort
    if effort not in _REASONING_EFFORT_OF:
        raise InvalidArgumentError.field(f"{field}.reasoning_effort", f"unknown value {effort}")
    return ModelOverrides(
        model=overrides.model,
        tool_choice=overrides.tool_choice,
        temperature=_optional(overrides, "temperature"),
        top_p=_optional(overrides, "top_p"),
        max_tokens=_optional(overrides, "max_tokens"),
        stop_sequences=tuple(overrides.stop_sequences),
        parallel_tool_calls=_optional(overrides, "parallel_tool_calls"),
        reasoning_effort=_REASONING_EFFORT_OF[effort] or None,
        response_json_schema=overrides.response_json_schema,
    )


def heartbeat_seconds(duration: duration_pb2.Duration, default: float, field: str) -> float:
    return _seconds(duration, field) or default


def decision_from_proto(decision: event_pb2.Decision) -> Decision:

    if not decision.request_id:
        raise InvalidArgumentError.field("decision.request_id", "must not be empty")
    if decision.verdict not in _VERDICT_OF:
        raise InvalidArgumentError.field("decision.verdict", f"unknown value {decision.verdict}")
    return Decision(
        request_id=decision.request_id,
        verdict=_VERDICT_OF[decision.verdict],
        reason=decision.reason,
        selected_options=tuple(decision.selected_options),
        text=decision.text,
        edited_arguments=decision.edited_arguments_json,
    )


def decision_to_proto(decision: Decision) -> event_pb2.Decision:
    return event_pb2.Decision(
        request_id=decision.request_id,
        verdict=_VERDICTS[decision.verdict],
        reason=decision.reason,
        selected_options=list(decision.selected_options),
        text=decision.text,
        edited_arguments_json=decision.edited_arguments,
    )


_RUN_STATUSES = {
    RunStatus.QUEUED: run_service_pb2.RUN_STATUS_QUEUED,
    RunStatus.RUNNING: run_service_pb2.RUN_STATUS_RUNNING,
    RunStatus.WAITING_FOR_DECISION: run_service_pb2.RUN_STATUS_WAITING_FOR_DECISION,
    RunStatus.FINISHED: run_service_pb2.RUN_STATUS_FINISHED,
    RunStatus.INTERRUPTED: run_service_pb2.RUN_STATUS_INTERRUPTED,
}
_RUN_STATUS_OF = {proto: status for status, proto in _RUN_STATUSES.items()}


def run_statuses_from_proto(values, field: str = "statuses") -> set[RunStatus]:
    """Domain run statuses; INVALID_ARGUMENT for unknown or unspecified."""
    statuses = set()
    for value in values:
        if value not in _RUN_STATUS_OF:
            raise InvalidArgumentError.field(field, f"unknown value {value}")
        statuses.add(_RUN_STATUS_OF[value])
    return statuses


def run_to_proto(record: RunRecord) -> run_service_pb2.Run:
    run = run_service_pb2.Run(
        run_id=record.id,
        session_id=record.session_id,
        agent=record.agent,
        agent_version=record.agent_version,
        status=_RUN_STATUSES[record.status],
        stop_reason=_STOP_REASON_BY_VALUE.get(record.stop_reason, event_pb2.STOP_REASON_UNSPECIFIED),
        error=record.error,
        create_time=timestamp(record.created_at),
        usage=usage_to_proto(record.usage),
        iterations=record.iterations,
        owner=record.owner,
        attempt=record.attempt,
        idempotency_key=record.idempotency_key,
        last_sequence=record.last_sequence,
        content=record.content,
        sender=record.sender,
    )
    link = record.options.get("delegation")
    if link:
        run.parent_run_id = link.get("parent_run_id", "")
        run.parent_session_id = link.get("parent_session_id", "")
        run.parent_tool_call_id = link.get("parent_tool_call_id", "")
        run.delegation_depth = int(link.get("depth", 1))
    if record.started_at:
        run.start_time.CopyFrom(timestamp(record.started_at))
    if record.ended_at:
        run.end_time.CopyFrom(timestamp(record.ended_at))
    return run


def session_state_from_proto(state: int) -> SessionState | None:
    return _SESSION_STATE_OF.get(state)


def stop_reason_value_to_proto(value: str) -> event_pb2.StopReason.ValueType:
    """A stored stop reason value ("" and unknown: unspecified)."""
    return _STOP_REASON_BY_VALUE.get(value, event_pb2.STOP_REASON_UNSPECIFIED)


def stop_reason_to_proto(reason: ev.StopReason) -> event_pb2.StopReason.ValueType:
    return _STOP_REASONS[reason]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    _set_timestamp(out, seconds)
    return out


def _set_timestamp(target: timestamp_pb2.Timestamp, seconds: float) -> None:
    """Set what `Timestamp.FromNanoseconds(int(seconds * 1e9))` sets,
    without its pure-Python helper: this runs for every streamed event."""
    target.seconds, target.nanos = divmod(int(seconds * 1e9), 1_000_000_000)


def config_from_proto(config: agent_pb2.AgentConfig) -> AgentConfig:
    """Validate a proto config; INVALID_ARGUMENT with `config.*` field paths."""
    return AgentConfig.parse(
        {
            "name": config.name,
            "description": config.description,
            "system_prompt": config.system_prompt,
            "model": config.model,
            "tools": tuple(config.tools),
            "max_iterations": config.max_iterations,
            "tool_choice": config.tool_choice,
            "thinking": config.thinking,
            "compact_threshold": config.compact_threshold,
            "approval_policy": _APPROVAL_POLICY_OF.get(config.approval_policy, config.approval_policy),
            "approval_required_tools": tuple(config.approval_required_tools),
            "context_window": config.context_window,
            "temperature": _optional(config, "temperature"),
            "top_p": _optional(config, "top_p"),
            "max_tokens": config.max_tokens,
            "stop_sequences": tuple(config.stop_sequences),
            "parallel_tool_calls": _optional(config, "parallel_tool_calls"),
            "reasoning_effort": _REASONING_EFFORT_OF.get(
                config.reasoning_effort, config.reasoning_effort
            ),
            "fallback_model": config.fallback_model,
            "response_json_schema": config.response_json_schema,
            "delegates": tuple(config.delegates),
            "remote_delegates": tuple(
                {"name": d.name, "agent_card_url": d.agent_card_url, "description": d.description}
                for d in config.remote_delegates
            ),
            "allowed_principals": tuple(config.allowed_principals),
            "allowed_roles": tuple(config.allowed_roles),
        }
    )


def config_to_proto(c: AgentConfig) -> agent_pb2.AgentConfig:
    """The proto of a config (the inverse of `config_from_proto`)."""
    return agent_pb2.AgentConfig(
        name=c.name,
        description=c.description,
        system_prompt=c.system_prompt,
        model=c.model,
        tools=list(c.tools),
        max_iterations=c.max_iterations,
        tool_choice=c.tool_choice,
        thinking=c.thinking,
        compact_threshold=c.compact_threshold,
        approval_policy=_APPROVAL_POLICIES[c.approval_policy],
        approval_required_tools=list(c.approval_required_tools),
        context_window=c.context_window,
        temperature=c.temperature,
        top_p=c.top_p,
        max_tokens=c.max_tokens,
        stop_sequences=list(c.stop_sequences),
        parallel_tool_calls=c.parallel_tool_calls,
        reasoning_effort=_REASONING_EFFORTS[c.reasoning_effort],
        fallback_model=c.fallback_model,
        response_json_schema=c.response_json_schema,
        delegates=list(c.delegates),
        remote_delegates=[
            agent_pb2.RemoteDelegate(
                name=d.name, agent_card_url=d.agent_card_url, description=d.description
            )
            for d in c.remote_delegates
        ],
        allowed_principals=list(c.allowed_principals),
        allowed_roles=list(c.allowed_roles),
    )


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        config=config_to_proto(agent.config),
        tools=[
            tool_pb2.Tool(
                name=t.name,
                description=t.description,
                parameters_json_schema=json.dumps(t.parameters, separators=(",", ":")),
                metadata=t.metadata,
            )
            for t in agent.tools
        ],
        create_time=timestamp(agent.created_at),
        source=agent.source,
        version=agent.version,
        update_time=timestamp(agent.updated_at or agent.created_at),
        uid=agent.uid,
        creator=agent.creator,
        state=agent_pb2.AGENT_STATE_REMOVED if agent.removed else agent_pb2.AGENT_STATE_ACTIVE,
    )


def session_to_proto(record: SessionRecord, active_run_id: str = "") -> session_pb2.Session:
    uptime = duration_pb2.Duration()
    uptime.FromNanoseconds(int(record.uptime_s * 1e9))
    return session_pb2.Session(
        id=record.id,
        agent=record.agent,
        created_by=record.created_by,
        title=record.title,
        state=_STATES[record.state],
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        message_count=record.message_count,
        uptime=uptime,
        active_run_id=active_run_id or record.active_run_id,
        always_approved_tools=list(record.always_approved_tools),
        last_run_id=record.last_run_id,
        last_run_stop_reason=_STOP_REASON_BY_VALUE.get(
            record.last_run_stop_reason,
            event_pb2.STOP_REASON_INTERRUPTED
            if record.last_run_stop_reason == INTERRUPTED
            else event_pb2.STOP_REASON_UNSPECIFIED,
        ),
        last_run_usage=usage_to_proto(record.last_run_usage),
        agent_version=record.agent_version,
        agent_uid=record.agent_uid,
    )


def tool_calls_to_proto(calls: list[ToolCall]) -> list[tool_pb2.ToolCall]:
    return [tool_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments) for c in calls]


def message_to_proto(message: Message) -> message_pb2.Message:
    return message_pb2.Message(
        role=_ROLES[message.role],
        content=message.content,
        reasoning_content=message.reasoning_content,
        tool_calls=tool_calls_to_proto(message.tool_calls),
        tool_call_id=message.tool_call_id,
        name=message.name,
        sender=message.sender,
        auto_injected=message.auto_injected,
        create_time=timestamp(message.created_at),
    )


def session_match_to_proto(
    match: SessionMatch, session: session_pb2.Session
) -> session_service_pb2.SessionSearchResult:
    """A search result; `session` is the session as `session_to_proto` made it."""
    return session_service_pb2.SessionSearchResult(
        session=session,
        score=match.score,
        matches=[
            session_service_pb2.MessageMatch(
                message_id=str(m.position),
                role=_ROLES[m.role],
                snippet=m.snippet,
                highlights=[session_service_pb2.TextRange(start=s, end=e) for s, e in m.highlights],
                create_time=timestamp(m.created_at),
            )
            for m in match.matches
        ],
    )


def usage_to_proto(usage: Usage) -> event_pb2.Usage:
    return event_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


def tool_result_to_proto(result: ev.ToolResult) -> event_pb2.ToolResult:
    proto = event_pb2.ToolResult(call_id=result.call_id, name=result.name, duration_ms=result.duration_ms)
    if result.error is not None:
        proto.error = result.error
    else:
        proto.output = result.output or ""
    return proto


#: Bytes of step text (tool outputs and errors) a `done` carries at most;
#: longer runs have their steps' tool outputs shortened (the whole history
#: is in ListMessages), so `done` stays well under the message limit.
DONE_STEPS_BUDGET = 2 * 1024 * 1024


def _shortened(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[: max(room, 0)] + f" [... {len(text) - max(room, 0)} more characters: see ListMessages]"


def response_to_proto(
    response: ev.AgentResponse, steps_budget: int = DONE_STEPS_BUDGET
) -> event_pb2.AgentResponse:
    """The run's outcome. The answer is not repeated: the last step's text,
    when it is `final_response`, is left out of it, and each step's calls
    are in `tool_calls` only (not again in its message). Tool outputs past
    `steps_budget` characters in all are shortened with a note."""
    room = steps_budget
    steps = []
    last = len(response.steps) - 1
    for index, step in enumerate(response.steps):
        message = message_to_proto(step.message)
        del message.tool_calls[:]
        if index == last and step.message.content == response.final_response:
            message.content = ""
        results = []
        for result in step.tool_results:
            proto = tool_result_to_proto(result)
            text = result.output if result.error is None else result.error
            if text and len(text) > room:
                short = _shortened(text, room)
                if result.error is None:
                    proto.output = short
                else:
                    proto.error = short
            room -= min(len(text or ""), max(room, 0))
            results.append(proto)
        steps.append(event_pb2.AgentStep(
            message=message,
            usage=usage_to_proto(step.usage),
            finish_reason=step.finish_reason,
            tool_calls=tool_calls_to_proto(step.tool_calls),
            tool_results=results,
        ))
    out = event_pb2.AgentResponse(
        final_response=response.final_response,
        iterations=response.iterations,
        stop_reason=_STOP_REASONS[response.stop_reason],
        error=response.error,
        steps=steps,
        model=response.model,
        usage=usage_to_proto(response.usage),
        unapplied_steering=[
            event_pb2.UserSteered(content=s.content, sender=s.sender)
            for s in response.unapplied_steering
        ],
    )
    if response.structured_output is not None:
        out.structured_output.update(response.structured_output)
    return out


# A payload is a message (copied into the event) or a dict of its fields:
# the segment boundaries are empty dicts, only marked present.
_EVENT_FIELDS: dict[type, Callable[[Any], tuple[str, Any]]] = {
    ev.RunStarted: lambda e: (
        "run_started",
        event_pb2.RunStarted(agent=e.agent, model=e.model, content=e.content, sender=e.sender,
                             traceparent=e.traceparent),
    ),
    ev.TextStart: lambda e: ("text_start", {}),
    ev.TextDelta: lambda e: ("text_delta", {"text": e.text}),
    ev.TextEnd: lambda e: ("text_end", {}),
    ev.ThinkingStart: lambda e: ("thinking_start", {}),
    ev.ThinkingDelta: lambda e: ("thinking_delta", {"text": e.text}),
    ev.ThinkingEnd: lambda e: ("thinking_end", {}),
    ev.ToolCallsBegin: lambda e: (
        "tool_calls_begin",
        event_pb2.ToolCallsBegin(tool_calls=tool_calls_to_proto(e.tool_calls)),
    ),
    ev.ToolCallsStart: lambda e: (
        "tool_calls_start",
        event_pb2.ToolCallsStart(tool_calls=tool_calls_to_proto(e.tool_calls)),
    ),
    ev.ToolResult: lambda e: ("tool_result", tool_result_to_proto(e)),
    ev.ToolCallsComplete: lambda e: ("tool_calls_complete", event_pb2.ToolCallsComplete()),
    ev.UserSteered: lambda e: (
        "user_steered",
        event_pb2.UserSteered(content=e.content, sender=e.sender),
    ),
    ev.UsageReported: lambda e: (
        "usage",
        event_pb2.UsageReported(iteration=e.iteration, usage=usage_to_proto(e.usage)),
    ),
    ev.Done: lambda e: ("done", response_to_proto(e.response)),
    ev.ApprovalRequired: lambda e: (
        "approval_required",
        event_pb2.ApprovalRequired(
            request_id=e.request_id,
            tool_call=tool_calls_to_proto([e.tool_call])[0],
            reason=e.reason,
            expire_time=timestamp(e.expire_time),
        ),
    ),
    ev.QuestionAsked: lambda e: (
        "question_asked",
        event_pb2.QuestionAsked(
            request_id=e.request_id,
            question=e.question,
            options=e.options,
            multi_select=e.multi_select,
            expire_time=timestamp(e.expire_time),
        ),
    ),
    ev.DecisionApplied: lambda e: (
        "decision_applied",
        event_pb2.DecisionApplied(request_id=e.request_id, decision=decision_to_proto(e.decision)),
    ),
    ev.Heartbeat: lambda e: ("heartbeat", event_pb2.Heartbeat()),
    ev.RunQueued: lambda e: ("run_queued", event_pb2.RunQueued(position=e.position)),
    ev.ContextUsage: lambda e: (
        "context_usage",
        event_pb2.ContextUsage(
            estimated_prompt_tokens=e.estimated_prompt_tokens,
            reported_prompt_tokens=e.reported_prompt_tokens,
            context_window=e.context_window,
        ),
    ),
    ev.Compacted: lambda e: ("compacted", event_pb2.Compacted(summary=e.summary)),
    ev.RunResumed: lambda e: (
        "run_resumed",
        event_pb2.RunResumed(
            attempt=e.attempt, last_stored_sequence=e.last_stored_sequence, reason=e.reason
        ),
    ),
    ev.RoundRetried: lambda e: (
        "round_retried",
        event_pb2.RoundRetried(attempt=e.attempt, cause=e.cause, error=e.error, model=e.model),
    ),
}


def _delegation_to_proto(e: ev.DelegationProgress) -> event_pb2.DelegationProgress:
    return event_pb2.DelegationProgress(
        tool_call_id=e.tool_call_id, agent=e.agent, child_session_id=e.child_session_id,
        child_run_id=e.child_run_id, event=event_to_proto(e.event),
    )


_EVENT_FIELDS[ev.DelegationProgress] = lambda e: ("delegation", _delegation_to_proto(e))


def event_to_proto(recorded: ev.RunEvent) -> event_pb2.AgentEvent:
    event = event_pb2.AgentEvent()
    fill_event(event, recorded)
    return event


def fill_event(target: event_pb2.AgentEvent, recorded: ev.RunEvent) -> None:
    """Set the empty `target` to `recorded`, in place: a response's `event`
    field is filled where it lies, instead of building an `AgentEvent` and
    copying it in (every streamed event goes through here)."""
    target.session_id = recorded.session_id
    target.run_id = recorded.run_id
    target.sequence = recorded.sequence
    _set_timestamp(target.time, recorded.time)
    event = recorded.event
    cls = type(event)
    if cls is ev.TextDelta:  # most of what streams
        target.text_delta.text = event.text  # type: ignore[union-attr]
        return
    name, payload = _EVENT_FIELDS[cls](event)
    field = getattr(target, name)
    if isinstance(payload, dict):
        if payload:
            field.MergeFrom(type(field)(**payload))
        else:
            field.SetInParent()
    else:
        field.CopyFrom(payload)
