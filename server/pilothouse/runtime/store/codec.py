"""JSON encoding of stored messages, compact markers and record fields,
shared by the SQL stores and the JSON Lines export.

A message is one JSON object holding only its non-default fields (`role`
always), with the wire-format names: `content`, `reasoning_content`,
`tool_calls` (`[{"id", "name", "arguments"}]`, `arguments` omitted when
empty), `tool_call_id`, `name`, `sender`, `auto_injected`. `created_at` is
kept outside the object (a column in the stores, a key of the line in JSON
Lines). Text is ASCII-escaped: any Python string, lone surrogates and NUL
included, survives a round trip through SQLite TEXT and PostgreSQL `json`.
"""

from __future__ import annotations

import json
from typing import Any

from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.store.base import (
    CompactMarker,
    RunOutcome,
    SessionRecord,
    SessionState,
    TranscriptItem,
)

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads

#: Role values → `Role`, faster than `Role(value)` in a 10,000-row loop.
ROLES: dict[str, Role] = {role.value: role for role in Role}
#: Kinds of transcript items, as stored in the `kind` column.
MESSAGE, COMPACT = "message", "compact"
_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


def message_fields(message: Message) -> dict[str, Any]:
    """The non-default fields of `message` (without `created_at`)."""
    fields: dict[str, Any] = {"role": message.role.value}
    if message.content:
        fields["content"] = message.content
    if message.reasoning_content:
        fields["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            wire = {"id": call.id, "name": call.name}
            if call.arguments:
                wire["arguments"] = call.arguments
            calls.append(wire)
        fields["tool_calls"] = calls
    if message.tool_call_id:
        fields["tool_call_id"] = message.tool_call_id
    if message.name:
        fields["name"] = message.name
    if message.sender:
        fields["sender"] = message.sender
    if message.auto_injected:
        fields["auto_injected"] = True
    return fields


def encode_message(message: Message) -> str:
    """`message_fields` as compact JSON text."""
    return _dumps(message_fields(message))


def message_from_fields(fields: dict[str, Any], created_at: float) -> Message:
    """The inverse of `message_fields`, trusting its input (stored data;
    the JSON Lines import validates before calling this)."""
    calls = fields.get("tool_calls")
    return Message(
        ROLES[fields["role"]],
        fields.get("content", ""),
        fields.get("reasoning_content", ""),
        [ToolCall(c["id"], c["name"], c.get("arguments", "")) for c in calls] if calls else [],
        fields.get("tool_call_id", ""),
        fields.get("name", ""),
        fields.get("sender", ""),
        fields.get("auto_injected", False),
        created_at,
    )


def encode_item(item: Message | CompactMarker) -> tuple[str, str, float]:
    """(kind, payload JSON, created_at) of a transcript item."""
    if isinstance(item, CompactMarker):
        return COMPACT, _dumps({"summary": item.summary}), item.created_at
    return MESSAGE, encode_message(item), item.created_at


def decode_item(kind: str, payload: str, created_at: float) -> Message | CompactMarker:
    """The inverse of `encode_item`."""
    if kind == MESSAGE:
        return message_from_fields(_loads(payload), created_at)
    return CompactMarker(_loads(payload)["summary"], created_at)


def decode_visible(kind: str, payload: str, created_at: float) -> Message:
    """A transcript item as a history message: a compact marker becomes the
    user message carrying its summary (see `memory.visible_history`)."""
    if kind == MESSAGE:
        return message_from_fields(_loads(payload), created_at)
    summary = Message.user(_loads(payload)["summary"])
    summary.created_at = created_at
    return summary


def run_items(outcome: RunOutcome) -> tuple[list[TranscriptItem], bool]:
    """The transcript items a run appends, in order (`messages_before_compact`,
    the compact marker stamped `finished_at`, `messages`), and whether a
    marker is among them."""
    items: list[TranscriptItem] = list(outcome.messages_before_compact)
    compact = outcome.compact_summary is not None
    if compact:
        items.append(CompactMarker(outcome.compact_summary or "", outcome.finished_at))
    items.extend(outcome.messages)
    return items, compact


def encode_usage(usage: Usage) -> str:
    """Usage as a JSON object of its non-zero counters."""
    return _dumps({f: v for f in _USAGE_FIELDS if (v := getattr(usage, f))})


def decode_usage(text: str) -> Usage:
    return Usage(**_loads(text))


def encode_tools(tools: list[str]) -> str:
    return _dumps(list(tools))


#: The `sessions` columns that make a `SessionRecord`, in field order.
RECORD_COLUMNS = (
    "id, agent, created_by, created_at, updated_at, title, state, message_count, uptime_s, "
    "always_approved_tools, active_run_id, last_run_id, last_run_stop_reason, last_run_usage"
)


def record_from_row(row: Any) -> SessionRecord:
    """A `SessionRecord` from a row of `RECORD_COLUMNS` (a tuple or an
    asyncpg Record; JSON columns as text)."""
    # float(): SQLite hands back an integral REAL as an int from RETURNING.
    return SessionRecord(
        row[0],
        row[1],
        row[2],
        float(row[3]),
        float(row[4]),
        row[5],
        SessionState(row[6]),
        row[7],
        float(row[8]),
        _loads(row[9]),
        row[10],
        row[11],
        row[12],
        decode_usage(row[13]),
    )


def record_params(record: SessionRecord) -> tuple[Any, ...]:
    """`record` as parameters in `RECORD_COLUMNS` order."""
    return (
        record.id,
        record.agent,
        record.created_by,
        record.created_at,
        record.updated_at,
        record.title,
        record.state.value,
        record.message_count,
        record.uptime_s,
        encode_tools(record.always_approved_tools),
        record.active_run_id,
        record.last_run_id,
        record.last_run_stop_reason,
        encode_usage(record.last_run_usage),
    )
