"""One contract suite for every session store: memory, SQLite (a real file)
and PostgreSQL (a real server from `tests.pg`), plus what only the durable
ones promise (restart, replicas, unavailability) and the store factory.
Runs (lease, checkpoints, records, events) are in `test_run_store`."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from pilothouse.errors import (
    AlreadyExistsError,
    NotFoundError,
    UnavailableError,
)
from pilothouse.runtime.messages import Message, ReasoningBlock, Role, ToolCall, Usage
from pilothouse.runtime.store import jsonl
from pilothouse.runtime.store.base import (
    AgentRecord,
    CompactMarker,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.store.factory import DEFAULT_STORE_URL, open_store, store_from_url
from pilothouse.runtime.store.memory import MemorySessionStore
from pilothouse.runtime.store.migrations import LATEST_VERSION, MIGRATIONS
from pilothouse.runtime.store.postgres import PostgresSessionStore
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.pg import PgServer, pg_server  # noqa: F401  (the fixture)
from tests.stores import (
    Backend,
    assistant,
    begin,
    conversation,
    event,
    final,
    record,
    run,
    run_record,
    tool_round,
    user,
)

pytest_plugins = ["tests.store_fixtures"]


# --- sessions ---------------------------------------------------------------


async def test_create_and_get_keep_every_field(store: SessionStore) -> None:
    full = record(
        "s1",
        updated_at=101.5,
        title="Trip to Lisbon",
        uptime_s=3.25,
        always_approved_tools=["calculate", "current_time"],
        last_run_id="r0",
        last_run_stop_reason="text_response",
        last_run_usage=Usage(1, 2, 3, 4, 5),
    )
    await store.create(full)
    assert await store.get("s1") == full
    assert await store.get("nope") is None
    assert await store.load_history("s1") == []
    assert await store.transcript("s1") == []


async def test_returned_objects_are_copies(store: SessionStore) -> None:
    mine = record("s1", always_approved_tools=["a"])
    await store.create(mine)
    mine.always_approved_tools.append("mutated")
    mine.title = "mutated"
    got = await store.get("s1")
    assert got is not None and got.always_approved_tools == ["a"] and got.title == ""
    got.always_approved_tools.append("again")
    got.last_run_usage.prompt_tokens = 99
    again = await store.get("s1")
    assert again is not None
    assert again.always_approved_tools == ["a"] and again.last_run_usage == Usage()

    messages = tool_round("c1")
    await run(store, "s1", "r1", messages)
    messages[0].tool_calls.clear()
    loaded = await store.load_history("s1")
    assert loaded[0].tool_calls[0].id == "c1"
    loaded[0].content = "changed"
    (await store.transcript("s1"))[1].content = "changed"
    assert await store.load_history("s1") == tool_round("c1")


async def test_find_open_is_the_latest_open_session_of_the_identity(store: SessionStore) -> None:
    assert await store.find_open("assistant", "me") is None
    await store.create(record("old", at=100.0))
    await store.create(record("new", at=200.0))
    await store.create(record("newest-closed", at=300.0, state=SessionState.CLOSED))
    await store.create(record("other-user", created_by="you", at=400.0))
    await store.create(record("other-agent", agent="coder", at=500.0))
    found = await store.find_open("assistant", "me")
    assert found is not None and found.id == "new"
    await store.set_state("new", SessionState.CLOSED, 600.0)
    found = await store.find_open("assistant", "me")
    assert found is not None and found.id == "old"
    assert (await store.find_open("coder", "me")).id == "other-agent"  # type: ignore[union-attr]
    assert await store.find_open("coder", "you") is None


async def test_list_filters_orders_by_activity_and_pages(store: SessionStore) -> None:
    await store.create(record("a", agent="x", created_by="u1", updated_at=10.0))
    await store.create(record("b", agent="x", created_by="u2", updated_at=30.0))
    await store.create(record("c", agent="y", created_by="u1", updated_at=20.0))
    await store.create(record("d", agent="x", created_by="u1", updated_at=30.0))  # ties with b
    await store.create(record("e", agent="x", created_by="u1", updated_at=5.0,
                              state=SessionState.CLOSED))  # fmt: skip

    async def ids(**filters) -> list[str]:
        args = {"agent": "", "created_by": "", "state": None, "offset": 0, "limit": 100}
        args.update(filters)
        return [r.id for r in await store.list(**args)]

    assert await ids() == ["d", "b", "c", "a", "e"]  # updated_at desc, ties by id desc
    assert await ids(agent="x") == ["d", "b", "a", "e"]
    assert await ids(created_by="u1") == ["d", "c", "a", "e"]
    assert await ids(agent="x", created_by="u1") == ["d", "a", "e"]
    assert await ids(state=SessionState.OPEN) == ["d", "b", "c", "a"]
    assert await ids(state=SessionState.CLOSED) == ["e"]
    assert await ids(agent="x", created_by="u1", state=SessionState.OPEN) == ["d", "a"]
    assert await ids(agent="nobody") == []
    assert await ids(offset=1, limit=2) == ["b", "c"]
    assert await ids(offset=4, limit=2) == ["e"]
    assert await ids(offset=5, limit=2) == []
    assert await ids(limit=0) == []

    # A run moves its session to the front.
    await run(store, "a", "r1", [user("hi")], at=99.0)
    assert (await ids())[0] == "a"


async def test_delete_removes_session_and_history(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await run(store, "s1", "r1", conversation(4))
    await run(store, "s2", "r2", conversation(2))
    await store.delete("s1")
    assert await store.get("s1") is None
    with pytest.raises(NotFoundError):
        await store.load_history("s1")
    with pytest.raises(NotFoundError):
        await store.delete("s1")
    assert await store.load_history("s2") == conversation(2)
    # The id can be used again, with an empty history.
    await store.create(record("s1"))
    assert await store.transcript("s1") == []


async def test_unknown_session_is_not_found_everywhere(store: SessionStore) -> None:
    calls = {
        "load_history": lambda: store.load_history("x"),
        "list_messages": lambda: store.list_messages("x", 0, 10),
        "list_messages newest": lambda: store.list_messages("x", 0, 10, newest_first=True),
        "transcript": lambda: store.transcript("x"),
        "begin_run": lambda: begin(store, "x", "r", lease_s=1, now=1),
        "renew_run": lambda: store.renew_run("x", "r", lease_s=1, now=1),
        "checkpoint": lambda: store.checkpoint("x", "r", final([user("hi")])),
        "insert_run": lambda: store.insert_run(run_record("r", "x")),
        "list_runs": lambda: store.list_runs("x", limit=10),
        "compact": lambda: store.compact("x", "summary", 1),
        "set_state": lambda: store.set_state("x", SessionState.CLOSED, 1),
        "set_title": lambda: store.set_title("x", "t", 1),
        "add_approved_tool": lambda: store.add_approved_tool("x", "t"),
        "delete": lambda: store.delete("x"),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError) as caught:
            await call()
        assert caught.value.reason == "SESSION_NOT_FOUND", name
        assert caught.value.metadata == {"session_id": "x"}, name


# --- history ----------------------------------------------------------------


async def test_history_and_pages_without_compaction(store: SessionStore) -> None:
    await store.create(record("s1"))
    first = conversation(4)
    second = [user("with tools", 20.0), *tool_round("c1", 21.0), assistant("done", 22.0)]
    await run(store, "s1", "r1", first)
    got = await run(store, "s1", "r2", second)
    everything = first + second
    assert got.message_count == len(everything) == 8
    assert await store.load_history("s1") == everything
    assert await store.transcript("s1") == everything
    assert await store.list_messages("s1", 0, 3) == everything[:3]
    assert await store.list_messages("s1", 3, 3) == everything[3:6]
    assert await store.list_messages("s1", 6, 3) == everything[6:]
    assert await store.list_messages("s1", 8, 3) == []
    assert await store.list_messages("s1", 0, 100) == everything
    newest = everything[::-1]
    assert await store.list_messages("s1", 0, 3, newest_first=True) == newest[:3]
    assert await store.list_messages("s1", 3, 3, newest_first=True) == newest[3:6]
    assert await store.list_messages("s1", 6, 3, newest_first=True) == newest[6:]
    assert await store.list_messages("s1", 9, 3, newest_first=True) == []
    assert await store.list_messages("s1", 0, 0) == []


async def test_history_starts_at_the_last_compact_marker(store: SessionStore) -> None:
    await store.create(record("s1"))
    before = conversation(4)
    await run(store, "s1", "r1", before)
    after_first = [user("next", 30.0), assistant("ok", 31.0)]
    got = await run(store, "s1", "r2", after_first, compact_summary="first summary", at=300.0)
    summary = Message.user("first summary")
    summary.created_at = 300.0
    assert got.message_count == 3
    assert await store.load_history("s1") == [summary, *after_first]

    # compact() outside a run, then more messages.
    compacted = await store.compact("s1", "second summary", 400.0)
    assert compacted.message_count == 1 and compacted.updated_at == 400.0
    second = Message.user("second summary")
    second.created_at = 400.0
    assert await store.load_history("s1") == [second]
    latest = [user("again", 50.0), assistant("sure", 51.0), user("bye", 52.0)]
    got = await run(store, "s1", "r3", latest, at=500.0)
    assert got.message_count == 4
    history = [second, *latest]
    assert await store.load_history("s1") == history
    assert await store.list_messages("s1", 0, 2) == history[:2]
    assert await store.list_messages("s1", 2, 5) == history[2:]
    assert await store.list_messages("s1", 0, 3, newest_first=True) == history[::-1][:3]
    assert await store.list_messages("s1", 3, 3, newest_first=True) == [second]
    assert await store.list_messages("s1", 4, 3, newest_first=True) == []
    assert await store.transcript("s1") == [
        *before,
        CompactMarker("first summary", 300.0),
        *after_first,
        CompactMarker("second summary", 400.0),
        *latest,
    ]


async def test_compaction_during_a_run_keeps_the_messages_before_it(
    store: SessionStore,
) -> None:
    """`messages_before_compact` go ahead of the marker, `messages` after."""
    await store.create(record("s1"))
    await run(store, "s1", "r0", conversation(2))
    before = [user("long question", 20.0), *tool_round("c1", 21.0)]
    after = [assistant("answer", 22.0)]
    done = await run(
        store, "s1", "r1", after, messages_before_compact=before, compact_summary="sum", at=300.0
    )
    assert done.message_count == 2
    summary = Message.user("sum")
    summary.created_at = 300.0
    assert await store.load_history("s1") == [summary, *after]
    assert await store.list_messages("s1", 0, 1, newest_first=True) == after
    assert await store.list_messages("s1", 1, 5, newest_first=True) == [summary]
    assert await store.transcript("s1") == [
        *conversation(2), *before, CompactMarker("sum", 300.0), *after,
    ]  # fmt: skip
    # Without a summary they are plain messages of the run.
    done = await run(
        store, "s1", "r2", [user("b", 30.0)], messages_before_compact=[user("a", 29.0)]
    )
    assert done.message_count == 4
    assert (await store.load_history("s1"))[-2:] == [user("a", 29.0), user("b", 30.0)]


async def test_pages_by_bytes_as_well_as_by_count(store: SessionStore) -> None:
    """With `max_bytes`, a page stops before the message that would pass
    it (text as UTF-8, tool calls as their JSON), but holds at least one."""
    await store.create(record("s1"))
    messages = [
        user("a" * 1000, 1.0), assistant("b" * 1000, 2.0),
        user("c" * 1000, 3.0), assistant("é" * 600, 4.0),  # 1,200 bytes
    ]  # fmt: skip
    await run(store, "s1", "r1", messages)

    async def page(offset: int, limit: int, max_bytes: int, **kw) -> list[Message]:
        return await store.list_messages("s1", offset, limit, max_bytes=max_bytes, **kw)

    assert await page(0, 10, 2000) == messages[:2]  # exactly full
    assert await page(0, 10, 1999) == messages[:1]
    assert await page(0, 10, 10) == messages[:1]  # always one
    assert await page(2, 10, 2199) == messages[2:3]
    assert await page(2, 10, 2200) == messages[2:]
    assert await page(0, 10, 2200, newest_first=True) == messages[::-1][:2]
    assert await page(0, 1, 10**6) == messages[:1]  # the count still applies
    assert await page(0, 10, 0) == messages  # no budget
    assert await page(4, 10, 10) == []
    # A tool call counts with its arguments; a result with its call id and name.
    call = ToolCall("c1", "calculate", '{"expression":"' + "9" * 500 + '"}')
    calls = [assistant("", 5.0, tool_calls=[call]), Message(
        Role.TOOL, "x" * 100, tool_call_id="c1", name="calculate", created_at=6.0)]  # fmt: skip
    await run(store, "s1", "r2", calls)
    sizes = await page(4, 10, 520)
    assert sizes == calls[:1]  # the call's JSON is over 500 bytes: the result does not fit
    assert await page(4, 10, 700) == calls
    with pytest.raises(NotFoundError):
        await store.list_messages("nope", 0, 10, max_bytes=100)


async def test_transcript_pages_join_up(store: SessionStore) -> None:
    await store.create(record("s1"))
    await run(store, "s1", "r1", conversation(5))
    await store.compact("s1", "summary " * 50, 30.0)
    await run(store, "s1", "r2", [user("x" * 3000, 40.0), *tool_round("c1", 41.0)])
    everything = await store.transcript("s1")
    assert len(everything) == 9
    assert await store.transcript_page("s1", 0, 100) == everything
    assert await store.transcript_page("s1", 3, 4) == everything[3:7]
    assert await store.transcript_page("s1", 9, 4) == []
    pages, offset = [], 0
    while page := await store.transcript_page("s1", offset, 3, max_bytes=500):
        assert len(page) <= 3
        pages.append(page)
        offset += len(page)
    assert [item for page in pages for item in page] == everything
    assert [len(page) for page in pages] == [3, 3, 1, 2]  # the long message alone
    with pytest.raises(NotFoundError):
        await store.transcript_page("nope", 0, 10)


async def test_export_reads_the_transcript_in_bounded_pages(store: SessionStore) -> None:
    """`iter_jsonl` gives the file `dump_jsonl` makes of the whole
    transcript, one chunk per page of the bounds."""
    await store.create(record("s1", title="Long"))
    for i in range(4):
        await run(store, "s1", f"r{i}", [user(f"q{i} " + "x" * 300 * i, 10.0 * i),
                                         *tool_round(f"c{i}", 10.0 * i + 1)])  # fmt: skip
        if i == 1:
            await store.compact("s1", f"summary {i}", 10.0 * i + 2)
    whole = jsonl.dump_jsonl(await store.get("s1"), await store.transcript("s1"))  # type: ignore[arg-type]
    chunks = [c async for c in jsonl.iter_jsonl(store, "s1", page_items=2, page_bytes=400)]
    assert b"".join(chunks) == whole == await jsonl.export_jsonl(store, "s1")
    lines = [chunk.count(b"\n") for chunk in chunks]
    assert lines[0] == 1 and max(lines[1:]) <= 2 and sum(lines) == 14
    assert 1 in lines[1:]  # the 900-byte question came alone
    with pytest.raises(NotFoundError):
        [c async for c in jsonl.iter_jsonl(store, "nope")]


async def test_every_message_field_survives(store: SessionStore) -> None:
    await store.create(record("s1"))
    odd = [
        Message(Role.SYSTEM, "You are terse.", created_at=1.5),
        Message(
            Role.USER, 'héllo ✓ 日本 \x00 nul \n newline "quoted"', sender="alice", created_at=2.25
        ),
        Message(Role.USER, "recalled memory", auto_injected=True, created_at=3.0),
        Message(
            Role.ASSISTANT,
            "",
            reasoning_content="thinking…",
            tool_calls=[
                ToolCall("c1", "calculate", '{"expression": "2**10"}'),
                ToolCall("c2", "now"),
            ],
            created_at=4.0,
        ),
        Message(Role.TOOL, "1024", tool_call_id="c1", name="calculate", created_at=5.0),
        Message(Role.TOOL, "", tool_call_id="c2", name="now", created_at=6.0),
        Message(
            Role.ASSISTANT,
            "signed",
            reasoning_content="step one",
            reasoning_blocks=[ReasoningBlock("step one", "sig=="), ReasoningBlock(redacted="opaque")],
            created_at=6.5,
        ),
        Message(Role.ASSISTANT, "x" * 100_000, created_at=1.7e9 + 0.123456),
        Message(Role.USER, "lone surrogate \udc80 from a bad decode", created_at=7.0),
        Message(Role.USER, "odd sender", sender="nul\x00sender", created_at=8.0),
        Message(Role.TOOL, "r\x00", tool_call_id="id\udc80", name="n\x00", created_at=9.0),
    ]
    await run(store, "s1", "r1", odd)
    assert await store.load_history("s1") == odd
    assert await store.list_messages("s1", 0, len(odd), newest_first=True) == odd[::-1]


async def test_summaries_with_any_text_survive(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.compact("s1", "nul \x00 and \udc80 surrogate", 10.0)
    assert await store.transcript("s1") == [CompactMarker("nul \x00 and \udc80 surrogate", 10.0)]
    assert (await store.load_history("s1"))[0].content == "nul \x00 and \udc80 surrogate"


# --- metadata ---------------------------------------------------------------


async def test_title_and_approved_tools(store: SessionStore) -> None:
    await store.create(record("s1", updated_at=100.0))
    titled = await store.set_title("s1", "Planning a trip", 500.0)
    assert titled.title == "Planning a trip"
    assert titled.updated_at == 100.0  # a title is not activity
    first = await store.add_approved_tool("s1", "calculate")
    again = await store.add_approved_tool("s1", "calculate")
    both = await store.add_approved_tool("s1", "current_time")
    assert first.always_approved_tools == again.always_approved_tools == ["calculate"]
    assert both.always_approved_tools == ["calculate", "current_time"]
    assert await store.get("s1") == both
    reopened = await store.set_state("s1", SessionState.OPEN, 600.0)
    assert reopened.state is SessionState.OPEN and reopened.title == "Planning a trip"


async def test_import_session(backend: Backend, store: SessionStore) -> None:
    items = [
        *conversation(4),
        CompactMarker("summary of four", 50.0),
        user("after", 60.0),
        *tool_round("c9", 61.0),
    ]
    imported = record("imp", title="Imported", always_approved_tools=["calculate"],
                      message_count=999)  # fmt: skip
    await store.import_session(imported, items)
    got = await store.get("imp")
    assert got is not None
    assert got.message_count == 4  # summary + 3, recomputed
    assert dataclasses.replace(got, message_count=999) == imported
    assert await store.transcript("imp") == items
    summary = Message.user("summary of four")
    summary.created_at = 50.0
    assert await store.load_history("imp") == [
        summary,
        user("after", 60.0),
        *tool_round("c9", 61.0),
    ]
    assert await store.list_messages("imp", 1, 1, newest_first=True) == [tool_round("c9", 61.0)[0]]
    # It runs like any other session.
    done = await run(store, "imp", "r1", [user("more", 70.0)])
    assert done.message_count == 5
    if backend.durable:
        with pytest.raises(AlreadyExistsError):
            await store.import_session(record("imp"), [user("clash")])
        with pytest.raises(AlreadyExistsError):
            await store.create(record("imp"))
        assert await store.load_history("imp") == [
            summary, user("after", 60.0), *tool_round("c9", 61.0), user("more", 70.0),
        ]  # fmt: skip


# --- durability ---------------------------------------------------------------


async def test_everything_survives_a_restart(durable: Backend) -> None:
    backend, store = durable, await durable.open()
    await store.create(record("s1", always_approved_tools=["calculate"]))
    await store.create(record("s2", created_by="you"))
    await run(store, "s1", "r1", conversation(4))
    await run(store, "s1", "r2", [user("x", 40.0)], compact_summary="sum", at=300.0)
    await store.set_title("s1", "Title", 301.0)
    # The server "dies" mid-run, its user message and events stored.
    await begin(store, "s2", "r3", now=310.0, messages=[user("y", 310.0)],
                events=[event("r3", 1), event("r3", 2)], run={"owner": "old:1"})  # fmt: skip
    records = {s: await store.get(s) for s in ("s1", "s2")}
    runs = {r: await store.get_run(r) for r in ("r1", "r2", "r3")}
    transcript = await store.transcript("s1")
    await store.close()

    restarted = await backend.open()
    assert {s: await restarted.get(s) for s in ("s1", "s2")} == records
    assert {r: await restarted.get_run(r) for r in ("r1", "r2", "r3")} == runs
    assert await restarted.transcript("s1") == transcript
    assert (await restarted.load_history("s1"))[1:] == [user("x", 40.0)]
    assert await restarted.load_history("s2") == [user("y", 310.0)]
    claimed = await restarted.claim_runs("new:1", now=1000.0, lease_s=60.0)
    assert [(r.id, r.owner, r.attempt, r.last_sequence) for r in claimed] == [("r3", "new:1", 1, 2)]
    assert await restarted.list_events("r3", 0, 10) == [event("r3", 1), event("r3", 2)]


async def test_migrations_are_recorded_once(durable: Backend) -> None:
    backend, store = durable, await durable.open()
    await store.create(record("s1"))
    await backend.open()  # a second open applies nothing and loses nothing
    query = "SELECT version, name FROM schema_migrations ORDER BY version"
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.path) as conn:  # type: ignore[arg-type]
            rows = conn.execute(query).fetchall()
    else:
        conn = await asyncpg.connect(backend.dsn)
        try:
            rows = [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    assert rows[-1][0] == LATEST_VERSION
    assert await store.get("s1") is not None


# --- PostgreSQL replicas ------------------------------------------------------


async def test_replicas_migrate_together(pg_server: PgServer) -> None:  # noqa: F811
    dsn = await pg_server.new_database()
    stores = [PostgresSessionStore(dsn, max_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].create(record("s1"))
        assert await stores[3].get("s1") is not None
    finally:
        for s in stores:
            await s.close()


class TcpProxy:
    """A TCP forwarder to PostgreSQL that the test can take down (every
    connection dropped, new ones refused) and bring back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_postgres_down_is_unavailable_then_recovers(pg_backend: Backend) -> None:
    proxy = TcpProxy(int(pg_backend.dsn.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    dsn = pg_backend.dsn.replace(f":{proxy.target_port}/", f":{proxy.port}/")
    store = PostgresSessionStore(dsn, connect_timeout_s=2.0)
    await store.open()
    try:
        await store.create(record("s1"))
        await proxy.stop()  # the server "goes down"
        for call in (
            lambda: store.get("s1"),
            lambda: begin(store, "s1", "r1", now=1.0),
            lambda: store.load_history("s1"),
        ):
            with pytest.raises(UnavailableError) as caught:
                await call()
            assert caught.value.reason == "STORE_UNAVAILABLE"
        await proxy.start()  # back on the same port: the pool reconnects
        assert (await store.get("s1")).active_run_id == ""  # type: ignore[union-attr]
        await begin(store, "s1", "r1", now=1.0)
    finally:
        await store.close()
        await proxy.stop()


# --- unavailable stores -------------------------------------------------------


async def test_sqlite_on_a_directory_is_unavailable(tmp_path: Path) -> None:
    store = SqliteSessionStore(tmp_path)
    with pytest.raises(UnavailableError) as caught:
        await store.open()
    assert caught.value.reason == "STORE_UNAVAILABLE"
    with pytest.raises(UnavailableError):
        await store.get("s1")


async def test_sqlite_corrupt_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, " * 400)
    with pytest.raises(UnavailableError):
        await SqliteSessionStore(path).open()


async def test_sqlite_locked_by_another_writer_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteSessionStore(path, busy_timeout_s=0.1)
    await store.open()
    try:
        await store.create(record("s1"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(UnavailableError):
                await store.create(record("s2"))
            assert await store.get("s1") is not None  # WAL: reads go on
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.create(record("s2"))
    finally:
        await store.close()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteSessionStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    with pytest.raises(UnavailableError):
        await store.create(record("s1"))


async def test_postgres_refused_is_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends
    store = PostgresSessionStore(
        f"postgresql://u:secret@127.0.0.1:{port}/db", connect_timeout_s=2.0
    )
    with pytest.raises(UnavailableError) as caught:
        await store.open()
    assert caught.value.reason == "STORE_UNAVAILABLE"
    assert "secret" not in caught.value.message
    with pytest.raises(UnavailableError):
        await store.get("s1")


# --- factory ----------------------------------------------------------------


async def test_open_store_by_url(tmp_path: Path, pg_server: PgServer) -> None:  # noqa: F811
    data_dir = tmp_path / "data"
    memory = await open_store("memory://", data_dir=data_dir)
    assert isinstance(memory, MemorySessionStore)

    default = await open_store(DEFAULT_STORE_URL, data_dir=data_dir)
    try:
        assert isinstance(default, SqliteSessionStore)
        assert default.path == data_dir / "sessions.db" and default.path.is_file()
    finally:
        await default.close()
    absolute = tmp_path / "elsewhere" / "deep" / "x.db"
    store = await open_store(f"sqlite:///{absolute}", data_dir=data_dir)
    try:
        assert store.path == absolute and absolute.is_file()  # type: ignore[attr-defined]
    finally:
        await store.close()
    nested = store_from_url("sqlite:///sub/dir/s.db", data_dir=data_dir)
    assert nested.path == data_dir / "sub" / "dir" / "s.db"  # type: ignore[attr-defined]

    dsn = await pg_server.new_database()
    for url in (dsn, dsn.replace("postgresql://", "postgres://", 1)):
        pg = await open_store(url, data_dir=data_dir)
        try:
            assert isinstance(pg, PostgresSessionStore)
            await pg.create(record(url.split(":", 1)[0]))
        finally:
            await pg.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/db",
        "sessions.db",
        "sqlite://host/x.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///x.db?mode=ro",
        "memory://x",
        "postgresql:///db",
    ],
)
def test_bad_store_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session store URL"):
        store_from_url(url, data_dir=tmp_path)


def test_bad_url_messages_hide_passwords(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        store_from_url("mysql://user:hunter2@localhost/db", data_dir=tmp_path)
    assert "hunter2" not in str(caught.value)


async def test_open_store_sqlite_directory_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UnavailableError):
        await open_store("sqlite:///file/sub/s.db", data_dir=tmp_path)


# --- the agent registry -------------------------------------------------------


def agent(name: str, *, at: float = 50.0, source: str = "api", **config) -> AgentRecord:
    return AgentRecord(name, {"name": name, **config}, source, 0, at, at)


async def test_agents_put_get_list_delete(store: SessionStore) -> None:
    stored = await store.put_agent(agent("zeta", tools=["calculate"]), replace=False)
    assert (stored.name, stored.version, stored.source) == ("zeta", 1, "api")
    assert stored.config == {"name": "zeta", "tools": ["calculate"]}
    await store.put_agent(agent("alpha"), replace=False)
    assert [a.name for a in await store.list_agents()] == ["alpha", "zeta"]
    got = await store.get_agent("zeta")
    assert got == stored
    got.config["tools"].append("mutated")  # a copy
    assert (await store.get_agent("zeta")).config["tools"] == ["calculate"]
    with pytest.raises(AlreadyExistsError) as error:
        await store.put_agent(agent("zeta"), replace=False)
    assert error.value.reason == "AGENT_EXISTS"
    assert await store.delete_agent("zeta")
    assert not await store.delete_agent("zeta")
    assert await store.get_agent("zeta") is None


async def test_replacing_an_agent_versions_it_only_when_it_changed(store: SessionStore) -> None:
    first = await store.put_agent(agent("file-agent", source="file", system_prompt="a"), replace=True)
    same = await store.put_agent(
        agent("file-agent", at=60.0, source="file", system_prompt="a"), replace=True
    )
    changed = await store.put_agent(
        agent("file-agent", at=70.0, source="file", system_prompt="b"), replace=True
    )
    assert (first.version, same.version, changed.version) == (1, 1, 2)
    assert changed.config["system_prompt"] == "b"
    assert (changed.created_at, changed.updated_at) == (50.0, 70.0)


async def test_agents_are_shared_by_every_store_on_the_storage(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    await one.put_agent(agent("common", model="m"), replace=False)
    assert (await two.get_agent("common")).config == {"name": "common", "model": "m"}
    assert await two.delete_agent("common")
    assert await one.get_agent("common") is None
