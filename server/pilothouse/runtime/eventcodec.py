"""Run events to and from the durable event log's JSON.

An event is stored as its kind (the name clients know it by: the
`AgentEvent` oneof field, e.g. "text_delta", "done") and a JSON object of
its fields; nested dataclasses become objects, enums their values, tuples
arrays. Fields equal to their default are left out. Decoding rebuilds the
same dataclasses, so a replay from the store equals what live subscribers
got.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from functools import cache
from typing import Any

import orjson

from pilothouse.runtime import events as ev
from pilothouse.runtime.events import Event, RunEvent
from pilothouse.runtime.store.base import StoredEvent

#: Event class → kind, in the order of the `AgentEvent` oneof.
KINDS: dict[type, str] = {
    ev.RunStarted: "run_started",
    ev.TextStart: "text_start",
    ev.TextDelta: "text_delta",
    ev.TextEnd: "text_end",
    ev.ThinkingStart: "thinking_start",
    ev.ThinkingDelta: "thinking_delta",
    ev.ThinkingEnd: "thinking_end",
    ev.ToolCallsBegin: "tool_calls_begin",
    ev.ToolCallsStart: "tool_calls_start",
    ev.ToolResult: "tool_result",
    ev.ToolCallsComplete: "tool_calls_complete",
    ev.UserSteered: "user_steered",
    ev.UsageReported: "usage",
    ev.Done: "done",
    ev.ApprovalRequired: "approval_required",
    ev.QuestionAsked: "question_asked",
    ev.DecisionApplied: "decision_applied",
    ev.Heartbeat: "heartbeat",
    ev.RunQueued: "run_queued",
    ev.ContextUsage: "context_usage",
    ev.Compacted: "compacted",
    ev.RunResumed: "run_resumed",
    ev.RoundRetried: "round_retried",
    ev.DelegationProgress: "delegation",
}
CLASSES: dict[str, type] = {kind: cls for cls, kind in KINDS.items()}

_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(data: Any) -> str:
    """Compact JSON text of `data`: orjson's (a tenth of the json module's
    time per event), or the json module's for what orjson cannot write
    (integers past 64 bits, keys that are not strings)."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return _json_dumps(data)


class EventDecodeError(ValueError):
    """A stored event that does not decode (unknown kind or bad fields)."""


def kind_of(event: Event) -> str:
    return KINDS[type(event)]


def encode(recorded: RunEvent) -> StoredEvent:
    """The stored form of a logged event."""
    event = recorded.event
    cls = type(event)
    if cls is ev.TextDelta or cls is ev.ThinkingDelta:  # the hot path
        payload = _dumps({"text": event.text})  # type: ignore[union-attr]
    else:
        payload = _dumps(_event_data(event))
    return StoredEvent(recorded.run_id, recorded.sequence, recorded.time, KINDS[cls], payload)


def decode(stored: StoredEvent, session_id: str) -> RunEvent:
    """The logged event back from its stored form. Raises EventDecodeError."""
    try:
        event = _event_of(stored.kind, json.loads(stored.payload))
    except (TypeError, ValueError, KeyError) as exc:
        raise EventDecodeError(f"event {stored.run_id}#{stored.sequence}: {exc}") from exc
    return RunEvent(session_id, stored.run_id, stored.sequence, stored.time, event)


def _event_data(event: Event) -> Any:
    """An event's JSON data; a forwarded child event (`delegation`) holds
    the child's event as {kind, session_id, run_id, sequence, time, data}."""
    if isinstance(event, ev.DelegationProgress):
        inner = event.event
        return {
            "tool_call_id": event.tool_call_id,
            "agent": event.agent,
            "child_session_id": event.child_session_id,
            "child_run_id": event.child_run_id,
            "event": {
                "kind": KINDS[type(inner.event)],
                "session_id": inner.session_id,
                "run_id": inner.run_id,
                "sequence": inner.sequence,
                "time": inner.time,
                "data": _event_data(inner.event),
            },
        }
    return encode_value(event)


def _event_of(kind: str, data: Any) -> Event:
    cls = CLASSES.get(kind)
    if cls is None:
        raise EventDecodeError(f"unknown event kind {kind!r}")
    if cls is ev.DelegationProgress:
        inner = data["event"]
        return ev.DelegationProgress(
            data["tool_call_id"], data["agent"], data.get("child_session_id", ""),
            data["child_run_id"],
            RunEvent(inner.get("session_id", ""), inner.get("run_id", ""), int(inner["sequence"]),
                     float(inner["time"]), _event_of(inner["kind"], inner["data"])),
        )
    return decode_value(cls, data)  # type: ignore[no-any-return]


# --- dataclass <-> JSON ------------------------------------------------------


def encode_value(value: Any) -> Any:
    """`value` (dataclasses, enums, lists, tuples, primitives) as JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f, default in _fields(type(value)):
            item = getattr(value, f.name)
            if default is not _NO_DEFAULT and item == default:
                continue
            out[f.name] = encode_value(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    return value


def decode_value(tp: Any, data: Any) -> Any:
    """JSON data back into type `tp` (the inverse of `encode_value`)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return decode_value(options[0], data)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        values = [decode_value(item, v) for v in data]
        return values if origin is list else tuple(values)
    if origin is dict:
        return dict(data)
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            if not isinstance(data, dict):
                raise TypeError(f"{tp.__name__}: expected an object")
            hints = _hints(tp)
            kwargs = {
                f.name: decode_value(hints[f.name], data[f.name])
                for f, _ in _fields(tp)
                if f.name in data
            }
            return tp(**kwargs)
        if issubclass(tp, enum.Enum):
            return tp(data)
        if tp is float and isinstance(data, int):
            return float(data)
    return data


_NO_DEFAULT = object()


@cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """Init fields of `cls` with their default values (or _NO_DEFAULT)."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _NO_DEFAULT
        out.append((f, default))
    return tuple(out)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
