"""A session as JSON Lines (UTF-8), one line a transcript item: export and
import (ExportSession / ImportSession).

Line 1 is the meta line, then one line per transcript item, in order:

    {"type":"meta","version":1,"id":"…","agent":"assistant","created_by":"me",
     "title":"…","created_at":1735689600.0,"updated_at":…,"uptime_s":12.5,
     "always_approved_tools":["calculate"],"message_count":3}
    {"type":"message","role":"user","content":"What is 2**10?","sender":"me","created_at":…}
    {"type":"message","role":"assistant","content":"","tool_calls":[{"id":"c1",
     "name":"calculate","arguments":"{\\"expression\\":\\"2**10\\"}"}],"created_at":…}
    {"type":"message","role":"tool","content":"1024","tool_call_id":"c1","name":"calculate",…}
    {"type":"compact","summary":"The user asked …","created_at":…}

Meta: `agent` (non-empty) and `created_by` are required; `version` (1),
`id` (the exported session's id), `title`, `created_at`, `updated_at`,
`uptime_s` (numbers ≥ 0, Unix seconds / seconds) and
`always_approved_tools` (strings) are optional; `state` and
`message_count` are written for the reader and ignored on import. Message
lines carry the `codec` fields (`role` and `content` required) plus
`created_at` (default: the meta's); compact lines `summary` and
`created_at`. Unknown keys are ignored (forward compatibility); unknown
line types are not.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pilothouse import jsontext
from pilothouse.errors import InvalidArgumentError, session_not_found
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store.base import (
    CompactMarker,
    SessionRecord,
    SessionState,
    SessionStore,
    TranscriptItem,
)
from pilothouse.runtime.store.codec import ROLES, message_fields, message_from_fields
from pilothouse.runtime.store.common import visible_history

#: The format version written in the meta line.
FORMAT_VERSION = 1
_FIELD = "content"  # ImportSessionRequest.content
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(slots=True)
class JsonlMeta:
    """The meta line of a session file. Times are Unix seconds."""

    agent: str
    created_by: str
    title: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    uptime_s: float = 0.0
    always_approved_tools: list[str] = field(default_factory=list)
    #: The id of the session that was exported ("" if the file has none).
    source_id: str = ""


# --- export -----------------------------------------------------------------


def _line(obj: dict[str, Any]) -> bytes:
    # Readable UTF-8; a lone surrogate (which UTF-8 cannot hold) makes the
    # line fall back to \u escapes.
    text = _dumps(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _meta_line(record: SessionRecord) -> bytes:
    return _line({
        "type": "meta",
        "version": FORMAT_VERSION,
        "id": record.id,
        "agent": record.agent,
        "created_by": record.created_by,
        "title": record.title,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "uptime_s": record.uptime_s,
        "always_approved_tools": list(record.always_approved_tools),
        "state": record.state.value,
        "message_count": record.message_count,
    })  # fmt: skip


def _item_line(item: TranscriptItem) -> bytes:
    if isinstance(item, CompactMarker):
        obj = {"type": "compact", "summary": item.summary, "created_at": item.created_at}
    else:
        obj = {"type": "message", **message_fields(item), "created_at": item.created_at}
        obj.setdefault("content", "")
    return _line(obj)


def dump_jsonl(record: SessionRecord, items: list[TranscriptItem]) -> bytes:
    """`record` and its transcript `items` as a session file."""
    lines = [_meta_line(record), *(_item_line(item) for item in items)]
    return b"\n".join(lines) + b"\n"


#: Bounds of one transcript read of `iter_jsonl`: items, and bytes of
#: stored size (a longer item is read alone).
EXPORT_PAGE_ITEMS = 512
EXPORT_PAGE_BYTES = 4 * 1024 * 1024


async def iter_jsonl(
    store: SessionStore,
    session_id: str,
    *,
    page_items: int = EXPORT_PAGE_ITEMS,
    page_bytes: int = EXPORT_PAGE_BYTES,
) -> AsyncIterator[bytes]:
    """The session file in chunks: the meta line, then the lines of each
    transcript page (up to `page_items` items and `page_bytes` of stored
    size, or one longer item), so neither the store nor this reads the
    whole transcript at once. The transcript is read up to its end when
    the last page is read; a checkpoint committed meanwhile is in the file
    whole or not at all. NotFoundError (SESSION_NOT_FOUND) for an unknown
    session, also when it is deleted during the export; UnavailableError
    from the store."""
    record = await store.get(session_id)
    if record is None:
        raise session_not_found(session_id)
    yield _meta_line(record) + b"\n"
    offset = 0
    while page := await store.transcript_page(
        session_id, offset, page_items, max_bytes=page_bytes
    ):
        offset += len(page)
        yield b"".join(_item_line(item) + b"\n" for item in page)


async def export_page(
    store: SessionStore, session_id: str, offset: int, *, page_bytes: int = EXPORT_PAGE_BYTES
) -> tuple[bytes, int | None]:
    """One page of the session file: from transcript item `offset` (the
    meta line first when it is 0), about `page_bytes` of stored size (at
    least one item), and the offset the next page starts at (None at the
    end). The transcript is append-only, so pages read one after the other
    make the whole file. Errors as `iter_jsonl`."""
    record = await store.get(session_id)
    if record is None:
        raise session_not_found(session_id)
    head = _meta_line(record) + b"\n" if offset == 0 else b""
    page = await store.transcript_page(session_id, offset, EXPORT_PAGE_ITEMS * 64,
                                       max_bytes=page_bytes)
    body = b"".join(_item_line(item) + b"\n" for item in page)
    following = offset + len(page)
    more = bool(page) and bool(await store.transcript_page(session_id, following, 1))
    return head + body, following if more else None


async def export_jsonl(store: SessionStore, session_id: str) -> bytes:
    """The session as a session file (UTF-8 JSON Lines, one line a
    transcript item, compact markers included), read in bounded pages
    (`iter_jsonl`). NotFoundError (SESSION_NOT_FOUND) for an unknown
    session; UnavailableError from the store."""
    return b"".join([chunk async for chunk in iter_jsonl(store, session_id)])


# --- import -----------------------------------------------------------------


class _Bad(Exception):
    """A problem with the current line (turned into InvalidArgumentError)."""


def _bad(line: int, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError.field(_FIELD, f"line {line}: {problem}", line=str(line))


def _str(obj: dict[str, Any], key: str, *, required: bool = False, non_empty: bool = False) -> str:
    if key not in obj:
        if required:
            raise _Bad(f'missing "{key}"')
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f'"{key}" must be a string, not {_kind(value)}')
    if non_empty and not value:
        raise _Bad(f'"{key}" must not be empty')
    return value


def _time(obj: dict[str, Any], key: str, default: float) -> float:
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f'"{key}" must be a number, not {_kind(value)}')
    if not math.isfinite(value) or value < 0:
        raise _Bad(f'"{key}" must be a finite number ≥ 0, not {value}')
    return float(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "a number"
    )


def _meta(obj: dict[str, Any]) -> JsonlMeta:
    if "version" in obj:
        version = obj["version"]
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise _Bad(f'unsupported "version" {version!r} (this server reads {FORMAT_VERSION})')
    tools = obj.get("always_approved_tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
        raise _Bad('"always_approved_tools" must be an array of non-empty strings')
    created_at = _time(obj, "created_at", 0.0)
    return JsonlMeta(
        agent=_str(obj, "agent", required=True, non_empty=True),
        created_by=_str(obj, "created_by", required=True),
        title=_str(obj, "title"),
        created_at=created_at,
        updated_at=_time(obj, "updated_at", created_at),
        uptime_s=_time(obj, "uptime_s", 0.0),
        always_approved_tools=list(dict.fromkeys(tools)),
        source_id=_str(obj, "id"),
    )


class _ToolCallCheck:
    """Tracks the tool calls of the latest assistant message until every one
    has its tool result (history must be valid for the model)."""

    def __init__(self) -> None:
        self.line = 0
        self.pending: dict[str, str] = {}  # call id → tool name, not yet answered

    def open(self, line: int, calls: list[dict[str, Any]]) -> None:
        self.line = line
        self.pending = {c["id"]: c["name"] for c in calls}

    def answer(self, call_id: str) -> None:
        if call_id not in self.pending:
            raise _Bad(
                f'tool message answers "tool_call_id" {call_id!r}, which is not a call '
                "of the preceding assistant message awaiting a result"
            )
        del self.pending[call_id]

    def require_done(self) -> None:
        if self.pending:
            ids = ", ".join(repr(i) for i in self.pending)
            raise _BadAt(self.line, f"assistant tool call(s) {ids} have no tool result after them")


class _BadAt(Exception):
    """A problem found later but belonging to an earlier line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


def _tool_calls(obj: dict[str, Any], role: str) -> list[dict[str, Any]]:
    calls = obj.get("tool_calls", [])
    if not isinstance(calls, list):
        raise _Bad(f'"tool_calls" must be an array, not {_kind(calls)}')
    if calls and role != "assistant":
        raise _Bad(f'only assistant messages have "tool_calls", not {role} messages')
    seen: set[str] = set()
    for index, call in enumerate(calls):
        if not isinstance(call, dict):
            raise _Bad(f'"tool_calls[{index}]" must be an object, not {_kind(call)}')
        for key in ("id", "name"):
            value = call.get(key)
            if not isinstance(value, str) or not value:
                raise _Bad(f'"tool_calls[{index}].{key}" must be a non-empty string')
        if not isinstance(call.get("arguments", ""), str):
            raise _Bad(f'"tool_calls[{index}].arguments" must be a string (JSON text)')
        if call["id"] in seen:
            raise _Bad(f'"tool_calls[{index}].id" {call["id"]!r} repeats an earlier call id')
        seen.add(call["id"])
    return calls


def _reasoning_blocks(obj: dict[str, Any], role: str) -> None:
    blocks = obj.get("reasoning_blocks", [])
    if not isinstance(blocks, list):
        raise _Bad(f'"reasoning_blocks" must be an array, not {_kind(blocks)}')
    if blocks and role != "assistant":
        raise _Bad(f'only assistant messages have "reasoning_blocks", not {role} messages')
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or not all(
            key in ("text", "signature", "redacted") and isinstance(value, str)
            for key, value in block.items()
        ):
            raise _Bad(
                f'"reasoning_blocks[{index}]" must be an object of strings '
                '"text", "signature", "redacted"'
            )


def _message(obj: dict[str, Any], default_time: float, calls: _ToolCallCheck, line: int) -> Message:
    role = _str(obj, "role", required=True)
    if role not in ROLES:
        raise _Bad(f'unknown "role" {role!r} (expected {", ".join(ROLES)})')
    _str(obj, "content", required=True)
    for key in ("reasoning_content", "sender", "name", "tool_call_id"):
        _str(obj, key)
    if not isinstance(obj.get("auto_injected", False), bool):
        raise _Bad('"auto_injected" must be a boolean')
    _reasoning_blocks(obj, role)
    tool_calls = _tool_calls(obj, role)
    if role == "tool":
        calls.answer(_str(obj, "tool_call_id", required=True, non_empty=True))
    else:
        if obj.get("tool_call_id"):
            raise _Bad(f'only tool messages have a "tool_call_id", not {role} messages')
        calls.require_done()
        if tool_calls:
            calls.open(line, tool_calls)
    return message_from_fields(obj, _time(obj, "created_at", default_time))


def parse_jsonl(data: bytes) -> tuple[JsonlMeta, list[TranscriptItem]]:
    """Validate a session file and return its meta and transcript.

    Every line is checked: UTF-8, a JSON object, a known `type`, the
    required fields with their types, known roles, tool calls only on
    assistant messages, every tool message answering a call of the
    preceding assistant message, and no assistant tool call left without
    its result (before the next non-tool line or the end of the file).
    Raises InvalidArgumentError with the field violation `content`:
    "line N: problem" (metadata `line`), for the first bad line.
    """
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline
    if not raw_lines:
        raise _bad(1, 'the file is empty: expected a meta line ({"type":"meta", …})')
    meta: JsonlMeta | None = None
    items: list[TranscriptItem] = []
    calls = _ToolCallCheck()
    try:
        for number, raw in enumerate(raw_lines, start=1):
            try:
                obj = _decode(raw.removesuffix(b"\r"))
                kind = obj.get("type")
                if number == 1:
                    if kind != "meta":
                        raise _Bad(
                            f'the first line must be the meta line ({{"type":"meta", …}}), '
                            f"not type {kind!r}"
                        )
                    meta = _meta(obj)
                    continue
                assert meta is not None
                if kind == "message":
                    items.append(_message(obj, meta.created_at, calls, number))
                elif kind == "compact":
                    calls.require_done()
                    summary = _str(obj, "summary", required=True)
                    items.append(CompactMarker(summary, _time(obj, "created_at", meta.created_at)))
                elif kind == "meta":
                    raise _Bad("a second meta line (only line 1 is the meta line)")
                elif "type" not in obj:
                    raise _Bad('missing "type" (meta, message or compact)')
                else:
                    raise _Bad(f'unknown "type" {kind!r} (expected message or compact)')
            except _Bad as exc:
                raise _bad(number, str(exc)) from None
        calls.require_done()
    except _BadAt as exc:
        raise _bad(exc.line, exc.problem) from None
    assert meta is not None
    return meta, items


def _decode(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise _Bad("empty line (every line must be one JSON object)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        obj = jsontext.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except jsontext.JsonTooDeep as exc:
        raise _Bad(str(exc)) from None
    if not isinstance(obj, dict):
        raise _Bad(f"must be a JSON object, not {_kind(obj)}")
    return obj


def record_from_meta(
    meta: JsonlMeta, items: list[TranscriptItem], *, new_id: str, now: float
) -> SessionRecord:
    """The record an import creates: a new id, open, idle, `updated_at`
    `now`, the rest from the meta line (message_count from `items`)."""
    return SessionRecord(
        id=new_id,
        agent=meta.agent,
        created_by=meta.created_by,
        created_at=meta.created_at or now,
        updated_at=now,
        title=meta.title,
        state=SessionState.OPEN,
        message_count=len(visible_history(items)),
        uptime_s=meta.uptime_s,
        always_approved_tools=list(meta.always_approved_tools),
    )


async def import_jsonl(
    store: SessionStore,
    data: bytes,
    *,
    new_id: str,
    now: float,
    check_agent: Callable[[str], object] | None = None,
    created_by: str | None = None,
) -> SessionRecord:
    """Validate `data` (see `parse_jsonl`) and store it as a new open
    session `new_id` with the same transcript, in one store transaction.

    `check_agent(meta.agent)` runs before anything is written (the runtime
    raises NotFoundError there for an unknown agent); when it returns (or
    its awaitable gives) a string, that is the `agent_uid` the new session
    is bound to. Raises
    InvalidArgumentError for a bad file (nothing written), AlreadyExistsError
    if `new_id` is taken (durable stores), UnavailableError from the store.
    `created_by`, when given, replaces the file's (an import belongs to the
    principal who imports it).
    """
    meta, items = parse_jsonl(data)
    if check_agent is not None:
        checked = check_agent(meta.agent)
        if inspect.isawaitable(checked):
            checked = await checked
    record = record_from_meta(meta, items, new_id=new_id, now=now)
    if check_agent is not None and isinstance(checked, str):
        record.agent_uid = checked
    if created_by is not None:
        record.created_by = created_by
    await store.import_session(record, items)
    return record
