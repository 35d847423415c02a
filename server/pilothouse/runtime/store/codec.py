"""Encoding of stored messages, compact markers and record fields, shared
by the SQL stores and the JSON Lines export.

`message_fields` is a message as one JSON object of its non-default fields
(`role` always) with the wire-format names: `content`, `reasoning_content`,
`tool_calls` (`[{"id", "name", "arguments"}]`, `arguments` omitted when
empty), `tool_call_id`, `name`, `sender`, `auto_injected`,
`reasoning_blocks` (`[{"text", "signature"}]` or `[{"redacted"}]`, empty
keys omitted); JSON Lines writes that object per line.

The stores keep a transcript item as the columns `ITEM_COLUMNS`: `kind`
(`message` or `compact`), `role`, the frequent text fields `content` (a
compact marker's summary), `sender`, `tool_call_id` and `name` as plain
TEXT, and `payload`: the JSON object of the remaining non-default fields
(`tool_calls`, `reasoning_content`, `auto_injected`, `reasoning_blocks`),
NULL when there are
none, which is most messages. Loading a long session thus parses JSON only
for tool calls. Text a TEXT column cannot hold (NUL, which PostgreSQL
refuses, or a lone surrogate, which UTF-8 cannot encode) goes into the
payload instead under its field name, ASCII-escaped, so any Python string
survives a round trip.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall, Usage
from pilothouse.runtime.store.base import (
    Checkpoint,
    CompactMarker,
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
    "cache_write_tokens",
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
    if message.reasoning_blocks:
        fields["reasoning_blocks"] = [
            {k: v for k, v in (("text", b.text), ("signature", b.signature),
                               ("redacted", b.redacted)) if v}
            for b in message.reasoning_blocks
        ]  # fmt: skip
    return fields


def _blocks(raw: list[dict[str, str]] | None) -> list[ReasoningBlock]:
    if not raw:
        return []
    return [ReasoningBlock(b.get("text", ""), b.get("signature", ""), b.get("redacted", "")) for b in raw]


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
        _blocks(fields.get("reasoning_blocks")),
    )


#: A transcript item as stored: (kind, role, content, sender, tool_call_id,
#: name, payload or None, created_at); see `ITEM_COLUMNS`.
ItemRow = tuple[str, str, str, str, str, str, "str | None", float]
#: The stored columns of a transcript item, in `ItemRow` order.
ITEM_COLUMNS = (
    "kind",
    "role",
    "content",
    "sender",
    "tool_call_id",
    "name",
    "payload",
    "created_at",
)
#: Message fields kept in their own TEXT columns (when a TEXT column can hold them).
_TEXT_COLUMNS = ("content", "sender", "tool_call_id", "name")


def _text_safe(text: str) -> bool:
    """Whether a TEXT column (SQLite and PostgreSQL, UTF-8) holds `text` as is."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Public name for the other codecs of stored text.
text_safe = _text_safe


def encode_item(item: Message | CompactMarker) -> ItemRow:
    """A transcript item as stored columns (see the module docstring)."""
    if isinstance(item, CompactMarker):
        if _text_safe(item.summary):
            return COMPACT, "", item.summary, "", "", "", None, item.created_at
        summary = _dumps({"content": item.summary})
        return COMPACT, "", "", "", "", "", summary, item.created_at
    fields = message_fields(item)
    del fields["role"]
    text = [fields.pop(key, "") for key in _TEXT_COLUMNS]
    for index, value in enumerate(text):
        if value and not _text_safe(value):
            fields[_TEXT_COLUMNS[index]], text[index] = value, ""
    content, sender, tool_call_id, name = text
    payload = _dumps(fields) if fields else None
    return MESSAGE, item.role.value, content, sender, tool_call_id, name, payload, item.created_at


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def stored_size(row: Sequence[Any]) -> int:
    """The stored size of a transcript item (`ItemRow`), in bytes: the
    UTF-8 of its text columns and its JSON payload. The unit of the stores'
    `max_bytes` pages (PostgreSQL computes the same with `octet_length`)."""
    return (
        _utf8_size(row[2]) + _utf8_size(row[3]) + _utf8_size(row[4]) + _utf8_size(row[5])
        + (len(row[6]) if row[6] is not None else 0)
    )  # fmt: skip


def budget(sizes: Sequence[int], max_bytes: int) -> int:
    """How many of the items of `sizes` (bytes) a page of `max_bytes`
    holds: those that fit, and at least one."""
    if max_bytes <= 0:
        return len(sizes)
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > max_bytes:
            return max(count, 1)
    return len(sizes)


def decode_visible(
    kind: str,
    role: str,
    content: str,
    sender: str,
    tool_call_id: str,
    name: str,
    payload: str | None,
    created_at: float,
) -> Message:
    """A stored item as a history message: a compact marker becomes the user
    message carrying its summary (see `memory.visible_history`)."""
    if payload is None:  # the common case: no JSON at all
        return Message(
            ROLES[role] if kind == MESSAGE else Role.USER,
            content, "", [], tool_call_id, name, sender, False, created_at,
        )  # fmt: skip
    fields = _loads(payload)
    if kind != MESSAGE:
        return Message(Role.USER, fields.get("content", content), created_at=created_at)
    calls = fields.get("tool_calls")
    return Message(
        ROLES[role],
        fields.get("content", content),
        fields.get("reasoning_content", ""),
        [ToolCall(c["id"], c["name"], c.get("arguments", "")) for c in calls] if calls else [],
        fields.get("tool_call_id", tool_call_id),
        fields.get("name", name),
        fields.get("sender", sender),
        fields.get("auto_injected", False),
        created_at,
        _blocks(fields.get("reasoning_blocks")),
    )


def decode_item(*row: Any) -> Message | CompactMarker:
    """The inverse of `encode_item` (`row` as `ItemRow`)."""
    if row[0] == MESSAGE:
        return decode_visible(*row)
    payload = row[6]
    summary = row[2] if payload is None else _loads(payload).get("content", row[2])
    return CompactMarker(summary, row[7])


_T = TypeVar("_T")


def decode_rows(rows: Sequence[Sequence[Any]], decode: Callable[..., _T]) -> list[_T]:
    """`[decode(*row) for row in rows]`, with the cyclic garbage collector
    paused over a long run of rows: building 10,000 messages would
    otherwise trigger a few collections of the whole heap (~20% of a
    load's time), for objects that hold no cycles. No await happens
    inside, so the pause lasts only as long as the loop."""
    if len(rows) < 1000 or not gc.isenabled():
        return [decode(*row) for row in rows]
    gc.disable()
    try:
        return [decode(*row) for row in rows]
    finally:
        gc.enable()


def checkpoint_items(checkpoint: Checkpoint) -> tuple[list[TranscriptItem], bool]:
    """The transcript items a checkpoint appends, in order
    (`messages_before_compact`, the compact marker stamped `now`,
    `messages`), and whether a marker is among them."""
    items: list[TranscriptItem] = list(checkpoint.messages_before_compact)
    compact = checkpoint.compact_summary is not None
    if compact:
        items.append(CompactMarker(checkpoint.compact_summary or "", checkpoint.now))
    items.extend(checkpoint.messages)
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
    "always_approved_tools, active_run_id, last_run_id, last_run_stop_reason, last_run_usage, "
    "agent_uid, agent_version"
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
        row[14],
        int(row[15]),
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
        record.agent_uid,
        record.agent_version,
    )


# --- Agents ------------------------------------------------------------------


def agent_config_text(config: dict[str, Any]) -> str:
    """Canonical JSON of an agent config: equal configs give equal text."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
