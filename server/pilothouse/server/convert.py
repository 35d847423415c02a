"""Translate between the runtime's types and `pilothouse.v1` protobuf
messages. Pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from pilothouse.runtime import events as ev
from pilothouse.runtime.agent import Agent, AgentConfig
from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.store.base import SessionRecord, SessionState
from pilothouse.v1 import agent_pb2, event_pb2, message_pb2, session_pb2, tool_pb2

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
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


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
        }
    )


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    c = agent.config
    return agent_pb2.Agent(
        config=agent_pb2.AgentConfig(
            name=c.name,
            description=c.description,
            system_prompt=c.system_prompt,
            model=c.model,
            tools=list(c.tools),
            max_iterations=c.max_iterations,
            tool_choice=c.tool_choice,
            thinking=c.thinking,
            compact_threshold=c.compact_threshold,
        ),
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
        active_run_id=active_run_id,
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


def usage_to_proto(usage: Usage) -> event_pb2.Usage:
    return event_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def tool_result_to_proto(result: ev.ToolResult) -> event_pb2.ToolResult:
    proto = event_pb2.ToolResult(call_id=result.call_id, name=result.name, duration_ms=result.duration_ms)
    if result.error is not None:
        proto.error = result.error
    else:
        proto.output = result.output or ""
    return proto


def response_to_proto(response: ev.AgentResponse) -> event_pb2.AgentResponse:
    return event_pb2.AgentResponse(
        final_response=response.final_response,
        iterations=response.iterations,
        stop_reason=_STOP_REASONS[response.stop_reason],
        error=response.error,
        steps=[
            event_pb2.AgentStep(
                message=message_to_proto(step.message),
                usage=usage_to_proto(step.usage),
                finish_reason=step.finish_reason,
                tool_calls=tool_calls_to_proto(step.tool_calls),
                tool_results=[tool_result_to_proto(r) for r in step.tool_results],
            )
            for step in response.steps
        ],
        model=response.model,
        usage=usage_to_proto(response.usage),
    )


_EVENT_FIELDS: dict[type, Callable[[Any], tuple[str, Any]]] = {
    ev.RunStarted: lambda e: (
        "run_started",
        event_pb2.RunStarted(agent=e.agent, model=e.model, content=e.content, sender=e.sender),
    ),
    ev.TextStart: lambda e: ("text_start", event_pb2.TextStart()),
    ev.TextDelta: lambda e: ("text_delta", event_pb2.TextDelta(text=e.text)),
    ev.TextEnd: lambda e: ("text_end", event_pb2.TextEnd()),
    ev.ThinkingStart: lambda e: ("thinking_start", event_pb2.ThinkingStart()),
    ev.ThinkingDelta: lambda e: ("thinking_delta", event_pb2.ThinkingDelta(text=e.text)),
    ev.ThinkingEnd: lambda e: ("thinking_end", event_pb2.ThinkingEnd()),
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
}


def event_to_proto(recorded: ev.RunEvent) -> event_pb2.AgentEvent:
    name, payload = _EVENT_FIELDS[type(recorded.event)](recorded.event)
    return event_pb2.AgentEvent(
        session_id=recorded.session_id,
        run_id=recorded.run_id,
        sequence=recorded.sequence,
        time=timestamp(recorded.time),
        **{name: payload},
    )
