"""Session export and import as JSON Lines: a round trip, and one test per
kind of bad line (the error names the line; nothing is written)."""

from __future__ import annotations

import json

import pytest

from pilothouse.errors import InvalidArgumentError, NotFoundError
from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall
from pilothouse.runtime.store.base import CompactMarker, SessionRecord, SessionState
from pilothouse.runtime.store.jsonl import (
    dump_jsonl,
    export_jsonl,
    import_jsonl,
    parse_jsonl,
)
from pilothouse.runtime.store.memory import MemorySessionStore
from tests.stores import begin, final

META = {"type": "meta", "agent": "assistant", "created_by": "me", "created_at": 100.0}


def file_of(*lines: object) -> bytes:
    """A session file: the default meta line, then `lines` (dicts are
    JSON-encoded, str/bytes written as they are)."""
    out = [json.dumps(META).encode()]
    for line in lines:
        if isinstance(line, dict):
            out.append(json.dumps(line).encode())
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(line)  # type: ignore[arg-type]
    return b"\n".join(out) + b"\n"


def msg(role: str, content: str = "text", **fields) -> dict:
    return {"type": "message", "role": role, "content": content, **fields}


def call(call_id: str, name: str = "calculate") -> dict:
    return {"id": call_id, "name": name, "arguments": "{}"}


def bad(data: bytes) -> tuple[int, str]:
    """Parse `data`, expecting INVALID_ARGUMENT; (line number, description)."""
    with pytest.raises(InvalidArgumentError) as caught:
        parse_jsonl(data)
    ((field, description),) = caught.value.field_violations
    assert field == "content"
    line = int(caught.value.metadata["line"])
    assert description.startswith(f"line {line}: ")
    return line, description


# --- round trip ---------------------------------------------------------------


async def test_export_then_import_is_the_same_session() -> None:
    store = MemorySessionStore()
    original = SessionRecord(
        "s1", "assistant", "me", 100.0, 100.0, title="Trip", uptime_s=4.5,
        always_approved_tools=["calculate"],
    )  # fmt: skip
    await store.create(original)
    first = [
        Message(Role.SYSTEM, "be brief", created_at=101.0),
        Message(Role.USER, "héllo 日本 \x00 \n", sender="alice", created_at=102.0),
        Message(Role.USER, "memory", auto_injected=True, created_at=102.5),
        Message(
            Role.ASSISTANT, "", reasoning_content="hmm",
            tool_calls=[ToolCall("c1", "calculate", '{"expression":"2**10"}'), ToolCall("c2", "now")],
            created_at=103.0,
        ),
        Message(Role.TOOL, "1024", tool_call_id="c1", name="calculate", created_at=104.0),
        Message(Role.TOOL, "", tool_call_id="c2", name="now", created_at=104.5),
        Message(
            Role.ASSISTANT, "It is 1024.", reasoning_content="so",
            reasoning_blocks=[ReasoningBlock("so", "sig"), ReasoningBlock(redacted="opaque")],
            created_at=105.0,
        ),
    ]  # fmt: skip
    await begin(store, "s1", "r1", now=101.0)
    await store.checkpoint("s1", "r1", final(first, at=106.0, uptime_s=1.0))
    await store.compact("s1", "They computed 2**10.", 107.0)
    later = [Message(Role.USER, "thanks", created_at=108.0)]
    await begin(store, "s1", "r2", now=108.0)
    await store.checkpoint("s1", "r2", final(later, at=109.0, uptime_s=1.0))

    data = await export_jsonl(store, "s1")
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [line["type"] for line in lines] == ["meta", *["message"] * 7, "compact", "message"]
    assert lines[0]["agent"] == "assistant" and lines[0]["id"] == "s1"
    assert lines[8] == {"type": "compact", "summary": "They computed 2**10.", "created_at": 107.0}
    assert "日本" in data.decode()  # readable UTF-8

    imported = await import_jsonl(store, data, new_id="s2", now=500.0)
    assert imported.id == "s2"
    assert await store.get("s2") == imported
    assert (imported.agent, imported.created_by, imported.title) == ("assistant", "me", "Trip")
    assert imported.always_approved_tools == ["calculate"] and imported.uptime_s == 6.5  # 4.5 + two runs
    assert imported.created_at == 100.0 and imported.updated_at == 500.0
    assert imported.state is SessionState.OPEN and imported.active_run_id == ""
    assert imported.message_count == 2
    assert await store.transcript("s2") == await store.transcript("s1")
    assert await store.load_history("s2") == await store.load_history("s1")
    # Exporting the copy gives the same lines but for id and times.
    again = [json.loads(line) for line in (await export_jsonl(store, "s2")).decode().splitlines()]
    assert again[1:] == lines[1:]


async def test_export_unknown_session_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        await export_jsonl(MemorySessionStore(), "nope")


def test_lone_surrogates_are_escaped_not_lost() -> None:
    record = SessionRecord("s1", "a", "me", 1.0, 1.0)
    data = dump_jsonl(record, [Message(Role.USER, "bad \udc80 text", created_at=2.0)])
    data.decode("utf-8")  # valid UTF-8
    _, items = parse_jsonl(data)
    assert items == [Message(Role.USER, "bad \udc80 text", created_at=2.0)]


def test_minimal_file_and_defaults() -> None:
    meta, items = parse_jsonl(
        b'{"type":"meta","agent":"a","created_by":""}\r\n{"type":"message","role":"user","content":"hi"}'
    )
    assert (meta.agent, meta.created_by, meta.title, meta.always_approved_tools) == (
        "a",
        "",
        "",
        [],
    )
    assert items == [Message(Role.USER, "hi", created_at=0.0)]


async def test_check_agent_runs_before_anything_is_written() -> None:
    store = MemorySessionStore()

    def unknown(agent: str) -> None:
        raise NotFoundError(f"agent {agent!r} not found")

    with pytest.raises(NotFoundError):
        await import_jsonl(store, file_of(msg("user")), new_id="s1", now=1.0, check_agent=unknown)
    assert await store.get("s1") is None


# --- bad files: every kind of bad line, with its line number ----------------


async def test_a_bad_file_writes_nothing() -> None:
    store = MemorySessionStore()
    data = file_of(msg("user"), msg("assistant"), msg("wizard"))
    with pytest.raises(InvalidArgumentError):
        await import_jsonl(store, data, new_id="s1", now=1.0)
    assert await store.get("s1") is None
    assert await store.list(agent="", created_by="", state=None, offset=0, limit=10) == []


def test_empty_file() -> None:
    assert bad(b"")[0] == 1
    assert bad(b"\n")[0] == 1


def test_not_json() -> None:
    line, description = bad(file_of(msg("user"), '{"type": "message", "role": '))
    assert line == 3 and "not valid JSON" in description


def test_not_utf8() -> None:
    line, description = bad(
        file_of(msg("user"), b'{"type":"message","role":"user","content":"\xff"}')
    )
    assert line == 3 and "UTF-8" in description


def test_not_an_object() -> None:
    line, description = bad(file_of('["type", "message"]'))
    assert line == 2 and "JSON object" in description


def test_blank_line_in_the_middle() -> None:
    line, description = bad(file_of(msg("user"), "", msg("assistant")))
    assert line == 3 and "empty line" in description


def test_first_line_must_be_meta() -> None:
    line, description = bad(json.dumps(msg("user")).encode() + b"\n")
    assert line == 1 and "meta" in description


def test_second_meta_line() -> None:
    line, description = bad(file_of(msg("user"), META))
    assert line == 3 and "second meta" in description


@pytest.mark.parametrize(
    ("meta", "word"),
    [
        ({"type": "meta", "created_by": "me"}, '"agent"'),
        ({"type": "meta", "agent": "", "created_by": "me"}, '"agent"'),
        ({"type": "meta", "agent": "a"}, '"created_by"'),
        ({"type": "meta", "agent": 7, "created_by": "me"}, '"agent"'),
        ({**META, "title": None}, '"title"'),
        ({**META, "created_at": "yesterday"}, '"created_at"'),
        ({**META, "uptime_s": -1}, '"uptime_s"'),
        ({**META, "uptime_s": True}, '"uptime_s"'),
        ({**META, "always_approved_tools": "calculate"}, '"always_approved_tools"'),
        ({**META, "always_approved_tools": [1]}, '"always_approved_tools"'),
        ({**META, "version": 2}, '"version"'),
    ],
)
def test_bad_meta_fields(meta: dict, word: str) -> None:
    line, description = bad(json.dumps(meta).encode() + b"\n")
    assert line == 1 and word in description


def test_unknown_type() -> None:
    line, description = bad(file_of(msg("user"), {"type": "event", "x": 1}))
    assert line == 3 and "unknown" in description and "event" in description


def test_missing_type() -> None:
    line, description = bad(file_of({"role": "user", "content": "hi"}))
    assert line == 2 and 'missing "type"' in description


def test_unknown_role() -> None:
    line, description = bad(file_of(msg("user"), msg("wizard")))
    assert line == 3 and "wizard" in description


def test_missing_role_and_content() -> None:
    assert bad(file_of({"type": "message", "content": "x"}))[1].endswith('missing "role"')
    line, description = bad(file_of(msg("user"), {"type": "message", "role": "user"}))
    assert line == 3 and 'missing "content"' in description


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"content": 5}, '"content"'),
        ({"content": None}, '"content"'),
        ({"sender": ["a"]}, '"sender"'),
        ({"reasoning_content": 1}, '"reasoning_content"'),
        ({"auto_injected": "yes"}, '"auto_injected"'),
        ({"created_at": "now"}, '"created_at"'),
        ({"created_at": float("inf")}, '"created_at"'),
    ],
)
def test_bad_message_field_types(fields: dict, word: str) -> None:
    line, description = bad(file_of(msg("user"), msg("user", **{"content": "x", **fields})))
    assert line == 3 and word in description


@pytest.mark.parametrize(
    ("role", "blocks", "word"),
    [
        ("assistant", "x", '"reasoning_blocks" must be an array'),
        ("assistant", [{"text": 1}], '"reasoning_blocks[0]"'),
        ("assistant", [{"colour": "red"}], '"reasoning_blocks[0]"'),
        ("user", [{"text": "t", "signature": "s"}], "only assistant messages"),
    ],
)
def test_bad_reasoning_blocks(role: str, blocks: object, word: str) -> None:
    line, description = bad(file_of(msg("user"), msg(role, "x", reasoning_blocks=blocks)))
    assert line == 3 and word in description


def test_empty_compact_summary_type() -> None:
    line, description = bad(file_of(msg("user"), {"type": "compact"}))
    assert line == 3 and '"summary"' in description
    line, description = bad(file_of({"type": "compact", "summary": 3}))
    assert line == 2 and '"summary"' in description


@pytest.mark.parametrize(
    ("calls", "word"),
    [
        ("c1", '"tool_calls" must be an array'),
        (["c1"], '"tool_calls[0]" must be an object'),
        ([{"name": "calculate"}], '"tool_calls[0].id"'),
        ([{"id": "c1"}], '"tool_calls[0].name"'),
        ([{"id": "c1", "name": "f", "arguments": {"x": 1}}], '"tool_calls[0].arguments"'),
        ([call("c1"), call("c1")], "repeats"),
    ],
)
def test_bad_tool_calls(calls: object, word: str) -> None:
    line, description = bad(file_of(msg("user"), msg("assistant", "", tool_calls=calls)))
    assert line == 3 and word in description


def test_tool_calls_only_on_assistant_messages() -> None:
    line, description = bad(file_of(msg("user", tool_calls=[call("c1")])))
    assert line == 2 and "only assistant" in description


def test_tool_call_id_only_on_tool_messages() -> None:
    line, description = bad(file_of(msg("user", tool_call_id="c1")))
    assert line == 2 and "only tool messages" in description


def test_tool_message_without_its_call() -> None:
    line, description = bad(file_of(msg("user"), msg("tool", "42", tool_call_id="c9")))
    assert line == 3 and "c9" in description


def test_tool_message_without_tool_call_id() -> None:
    data = file_of(msg("assistant", "", tool_calls=[call("c1")]), msg("tool", "42"))
    line, description = bad(data)
    assert line == 3 and '"tool_call_id"' in description


def test_tool_result_answered_twice() -> None:
    data = file_of(
        msg("assistant", "", tool_calls=[call("c1")]),
        msg("tool", "1", tool_call_id="c1"),
        msg("tool", "1", tool_call_id="c1"),
    )
    assert bad(data)[0] == 4


def test_assistant_tool_call_without_result_before_the_next_message() -> None:
    data = file_of(
        msg("user"),
        msg("assistant", "", tool_calls=[call("c1"), call("c2")]),
        msg("tool", "1", tool_call_id="c1"),
        msg("user", "next"),
    )
    line, description = bad(data)
    assert line == 3 and "'c2'" in description and "no tool result" in description


def test_assistant_tool_call_without_result_at_the_end() -> None:
    line, description = bad(file_of(msg("user"), msg("assistant", "", tool_calls=[call("c1")])))
    assert line == 3 and "'c1'" in description


def test_assistant_tool_call_without_result_before_a_compact_marker() -> None:
    data = file_of(
        msg("assistant", "", tool_calls=[call("c1")]), {"type": "compact", "summary": "s"}
    )
    assert bad(data)[0] == 2


def test_a_valid_file_with_tools_and_markers() -> None:
    meta, items = parse_jsonl(
        file_of(
            msg("user", "q", created_at=1.0),
            msg("assistant", "", tool_calls=[call("c1"), call("c2")], created_at=2.0),
            msg("tool", "b", tool_call_id="c2", name="calculate", created_at=3.0),
            msg("tool", "a", tool_call_id="c1", name="calculate", created_at=4.0),
            {"type": "compact", "summary": "s", "created_at": 5.0, "future_field": 1},
            msg("assistant", "done"),
        )
    )
    assert meta.agent == "assistant"
    assert [type(i).__name__ for i in items] == ["Message"] * 4 + ["CompactMarker", "Message"]
    assert items[4] == CompactMarker("s", 5.0)
    assert items[5].created_at == 100.0  # the meta's created_at by default
