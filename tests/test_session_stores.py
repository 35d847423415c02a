"""One contract suite for every session store: memory, SQLite (a real file)
and PostgreSQL (a real server from `tests.pg`), plus what only the durable
ones promise (restart, replicas, atomicity under failure, unavailability)
and the store factory."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)
from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.store.base import (
    INTERRUPTED,
    AgentRecord,
    CompactMarker,
    RunOutcome,
    SessionRecord,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.store.codec import ITEM_COLUMNS, encode_item
from pilothouse.runtime.store.factory import DEFAULT_STORE_URL, open_store, store_from_url
from pilothouse.runtime.store.memory import MemorySessionStore
from pilothouse.runtime.store.migrations import LATEST_VERSION, MIGRATIONS
from pilothouse.runtime.store.postgres import PostgresSessionStore
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.pg import PgServer, pg_server  # noqa: F401  (the fixture)

BACKENDS = ["memory", "sqlite", "postgres"]


@dataclasses.dataclass
class Backend:
    """One kind of store; `new()` makes another store object on the same
    storage (a restarted server, or a second replica)."""

    kind: str
    new: Callable[[], SessionStore]
    dsn: str = ""
    path: Path | None = None
    opened: list[SessionStore] = dataclasses.field(default_factory=list)

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    async def open(self) -> SessionStore:
        store = self.new()
        await store.open()
        self.opened.append(store)
        return store


def _pg(request: pytest.FixtureRequest, kind: str) -> PgServer | None:
    return request.getfixturevalue("pg_server") if kind == "postgres" else None


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, PgServer | None]:
    return request.param, _pg(request, request.param)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_kind(request: pytest.FixtureRequest) -> tuple[str, PgServer | None]:
    return request.param, _pg(request, request.param)


async def _backend(kind: str, server: PgServer | None, tmp_path: Path) -> Backend:
    if kind == "memory":
        shared = MemorySessionStore()
        return Backend(kind, lambda: shared)
    if kind == "sqlite":
        path = tmp_path / "sessions.db"
        return Backend(kind, lambda: SqliteSessionStore(path), path=path)
    assert server is not None
    dsn = await server.new_database()
    return Backend(kind, lambda: PostgresSessionStore(dsn, max_size=4), dsn=dsn)


@pytest_asyncio.fixture(loop_scope="session")
async def backend(backend_kind, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every store: memory, SQLite, PostgreSQL."""
    b = await _backend(*backend_kind, tmp_path)
    yield b
    for store in b.opened:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def durable(durable_kind, tmp_path: Path) -> AsyncIterator[Backend]:
    """The durable stores: SQLite, PostgreSQL."""
    b = await _backend(*durable_kind, tmp_path)
    yield b
    for store in b.opened:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def store(backend: Backend) -> SessionStore:
    return await backend.open()


# --- helpers ----------------------------------------------------------------


def record(session_id: str, *, agent: str = "assistant", created_by: str = "me", at: float = 100.0,
           **fields) -> SessionRecord:  # fmt: skip
    return SessionRecord(session_id, agent, created_by, at, fields.pop("updated_at", at), **fields)


def user(text: str, at: float = 1.0, **fields) -> Message:
    return Message(Role.USER, text, created_at=at, **fields)


def assistant(text: str, at: float = 1.0, **fields) -> Message:
    return Message(Role.ASSISTANT, text, created_at=at, **fields)


def tool_round(call_id: str, at: float = 1.0) -> list[Message]:
    """An assistant tool call and its result."""
    return [
        assistant("", at, tool_calls=[ToolCall(call_id, "calculate", '{"expression":"1+1"}')]),
        Message(Role.TOOL, "2", tool_call_id=call_id, name="calculate", created_at=at),
    ]


def outcome(messages: list[Message], *, at: float = 200.0, **fields) -> RunOutcome:
    values = {"stop_reason": "text_response", "usage": Usage(10, 5, 15), "uptime_s": 1.5}
    values.update(fields)
    return RunOutcome(messages=messages, finished_at=at, **values)


async def run(store: SessionStore, session_id: str, run_id: str, messages: list[Message],
              *, now: float = 150.0, **fields) -> SessionRecord:  # fmt: skip
    await store.begin_run(session_id, run_id, lease_s=60.0, now=now)
    return await store.finish_run(session_id, run_id, outcome(messages, **fields))


def conversation(n: int, start: float = 10.0) -> list[Message]:
    return [(user if i % 2 == 0 else assistant)(f"message {i}", start + i) for i in range(n)]


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
    await run(store, "s2", "r1", conversation(2))
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
        "begin_run": lambda: store.begin_run("x", "r", lease_s=1, now=1),
        "renew_run": lambda: store.renew_run("x", "r", lease_s=1, now=1),
        "finish_run": lambda: store.finish_run("x", "r", outcome([user("hi")])),
        "abandon_run": lambda: store.abandon_run("x", "r", "cancelled", 1),
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
        Message(Role.ASSISTANT, "x" * 100_000, created_at=1.7e9 + 0.123456),
        Message(Role.USER, "lone surrogate \udc80 from a bad decode", created_at=7.0),
        Message(Role.USER, "odd sender", sender="nul\x00sender", created_at=8.0),
        Message(Role.TOOL, "r\x00", tool_call_id="id\udc80", name="n\x00", created_at=9.0),
    ]
    await run(store, "s1", "r1", odd)
    assert await store.load_history("s1") == odd
    assert await store.list_messages("s1", 0, 10, newest_first=True) == odd[::-1]


async def test_summaries_with_any_text_survive(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.compact("s1", "nul \x00 and \udc80 surrogate", 10.0)
    assert await store.transcript("s1") == [CompactMarker("nul \x00 and \udc80 surrogate", 10.0)]
    assert (await store.load_history("s1"))[0].content == "nul \x00 and \udc80 surrogate"


# --- runs -------------------------------------------------------------------


async def test_one_run_at_a_time(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.begin_run("s1", "r1", lease_s=60.0, now=100.0)
    assert (await store.get("s1")).active_run_id == "r1"  # type: ignore[union-attr]
    with pytest.raises(FailedPreconditionError) as caught:
        await store.begin_run("s1", "r2", lease_s=60.0, now=101.0)
    assert caught.value.reason == "RUN_ACTIVE"
    assert caught.value.metadata == {"session_id": "s1", "active_run_id": "r1", "lease_expired": "false"}
    done = await store.finish_run("s1", "r1", outcome([user("hi")], at=102.0))
    assert done.active_run_id == ""
    await store.begin_run("s1", "r2", lease_s=60.0, now=103.0)
    assert (await store.get("s1")).active_run_id == "r2"  # type: ignore[union-attr]


async def test_closed_session_takes_no_run(store: SessionStore) -> None:
    await store.create(record("s1"))
    closed = await store.set_state("s1", SessionState.CLOSED, 150.0)
    assert closed.state is SessionState.CLOSED and closed.updated_at == 150.0
    with pytest.raises(FailedPreconditionError) as caught:
        await store.begin_run("s1", "r1", lease_s=60.0, now=151.0)
    assert caught.value.reason == "SESSION_CLOSED"
    # History stays readable.
    assert await store.load_history("s1") == []


async def test_finish_run_stores_messages_and_metadata(store: SessionStore) -> None:
    await store.create(record("s1", uptime_s=1.0))
    messages = [user("q"), *tool_round("c1"), assistant("a")]
    await store.begin_run("s1", "r1", lease_s=60.0, now=150.0)
    done = await store.finish_run(
        "s1",
        "r1",
        RunOutcome(messages, "text_response", Usage(100, 20, 120, 50, 7), 2.5, 250.0),
    )
    assert done == await store.get("s1")
    assert done.message_count == 4
    assert done.uptime_s == pytest.approx(3.5)
    assert done.updated_at == 250.0
    assert (done.last_run_id, done.last_run_stop_reason) == ("r1", "text_response")
    assert done.last_run_usage == Usage(100, 20, 120, 50, 7)
    assert done.active_run_id == ""
    # A run that stored nothing still counts its uptime and last-run fields.
    await store.begin_run("s1", "r2", lease_s=60.0, now=260.0)
    done = await store.finish_run("s1", "r2", outcome([], at=270.0, stop_reason="no_action"))
    assert done.message_count == 4 and done.last_run_stop_reason == "no_action"
    assert done.uptime_s == pytest.approx(5.0)


async def test_expired_lease_is_taken_over_and_its_run_loses_it(store: SessionStore) -> None:
    await store.create(record("s1"))
    await run(store, "s1", "r0", [user("kept")])
    await store.begin_run("s1", "r1", lease_s=10.0, now=100.0)
    with pytest.raises(FailedPreconditionError):
        await store.begin_run("s1", "r2", lease_s=10.0, now=109.9)
    await store.begin_run("s1", "r2", lease_s=10.0, now=110.0)  # r1's lease has expired
    taken = await store.get("s1")
    assert taken is not None
    assert (taken.active_run_id, taken.last_run_id, taken.last_run_stop_reason) == (
        "r2", "r1", INTERRUPTED,
    )  # fmt: skip
    # The old run finds out: no renewal, and its finish writes nothing.
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=111.0) is False
    with pytest.raises(FailedPreconditionError) as caught:
        await store.finish_run("s1", "r1", outcome([user("late")]))
    assert caught.value.reason == "LEASE_LOST"
    assert caught.value.metadata == {"session_id": "s1", "run_id": "r1"}
    assert await store.load_history("s1") == [user("kept")]
    assert await store.get("s1") == taken


async def test_renew_extends_the_lease(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.begin_run("s1", "r1", lease_s=10.0, now=100.0)
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=108.0) is True
    with pytest.raises(FailedPreconditionError):
        await store.begin_run("s1", "r2", lease_s=10.0, now=115.0)
    assert await store.renew_run("s1", "other", lease_s=10.0, now=115.0) is False
    await store.begin_run("s1", "r2", lease_s=10.0, now=118.0)


async def test_abandon_run_releases_without_appending(store: SessionStore) -> None:
    await store.create(record("s1"))
    await run(store, "s1", "r0", [user("kept")])
    await store.begin_run("s1", "r1", lease_s=60.0, now=300.0)
    await store.abandon_run("s1", "other", "cancelled", 301.0)  # not the holder: no-op
    assert (await store.get("s1")).active_run_id == "r1"  # type: ignore[union-attr]
    await store.abandon_run("s1", "r1", "error", 302.0)
    got = await store.get("s1")
    assert got is not None
    assert (got.active_run_id, got.last_run_id, got.last_run_stop_reason) == ("", "r1", "error")
    assert got.updated_at == 302.0 and got.message_count == 1
    assert await store.load_history("s1") == [user("kept")]
    await store.begin_run("s1", "r2", lease_s=60.0, now=303.0)


async def test_recover_interrupted_marks_only_expired_leases(store: SessionStore) -> None:
    for session_id in ("expired", "live", "idle", "expired2"):
        await store.create(record(session_id))
    await store.begin_run("expired", "r1", lease_s=10.0, now=100.0)
    await store.begin_run("expired2", "r2", lease_s=5.0, now=100.0)
    await store.begin_run("live", "r3", lease_s=100.0, now=100.0)
    assert sorted(await store.recover_interrupted(150.0)) == ["expired", "expired2"]
    for session_id, run_id in (("expired", "r1"), ("expired2", "r2")):
        got = await store.get(session_id)
        assert got is not None
        assert (got.active_run_id, got.last_run_id, got.last_run_stop_reason) == (
            "", run_id, INTERRUPTED,
        )  # fmt: skip
        assert await store.transcript(session_id) == []
    assert (await store.get("live")).active_run_id == "r3"  # type: ignore[union-attr]
    assert await store.recover_interrupted(150.0) == []
    await store.begin_run("expired", "r4", lease_s=10.0, now=151.0)


async def test_failed_finish_leaves_nothing_partial(durable: Backend) -> None:
    """A finish that fails half-way (its second transcript row collides with
    a row planted behind the store's back) rolls back entirely: no message,
    no metadata change, the lease still held."""
    backend, store = durable, await durable.open()
    await store.create(record("s1"))
    await run(store, "s1", "r0", conversation(2))
    await store.begin_run("s1", "r1", lease_s=60.0, now=300.0)
    before = await store.get("s1")
    await plant_transcript_row(backend, "s1", seq=3)  # the run's second message's seq
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await store.finish_run("s1", "r1", outcome(conversation(3, start=50.0), at=400.0))
    assert await store.get("s1") == before
    assert await store.load_history("s1") == conversation(2)
    assert await store.list_messages("s1", 0, 10, newest_first=True) == conversation(2)[::-1]


async def plant_transcript_row(backend: Backend, session_id: str, seq: int) -> None:
    """Insert a transcript row directly into the database (not visible in the
    history: `next_seq` does not move)."""
    row = (session_id, seq, *encode_item(user("planted")))
    sql = f"INSERT INTO transcript_items (session_id, seq, {', '.join(ITEM_COLUMNS)})"
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.path) as conn:  # type: ignore[arg-type]
            conn.execute(f"{sql} VALUES ({', '.join('?' * len(row))})", row)
        return
    conn = await asyncpg.connect(backend.dsn)
    try:
        values = ", ".join(f"${i + 1}" for i in range(len(row)))
        await conn.execute(f"{sql} VALUES ({values})", *row)
    finally:
        await conn.close()


async def test_run_with_compaction_is_one_unit(store: SessionStore) -> None:
    """A LEASE_LOST finish with a compact summary writes neither the marker
    nor the messages."""
    await store.create(record("s1"))
    await run(store, "s1", "r0", conversation(3))
    await store.begin_run("s1", "r1", lease_s=1.0, now=100.0)
    await store.begin_run("s1", "r2", lease_s=60.0, now=200.0)
    with pytest.raises(FailedPreconditionError):
        await store.finish_run("s1", "r1", outcome([user("x")], compact_summary="lost"))
    assert await store.transcript("s1") == conversation(3)
    assert (await store.get("s1")).message_count == 3  # type: ignore[union-attr]


async def test_cancelled_finishes_leave_whole_runs_only(store: SessionStore) -> None:
    """Cancelling `finish_run` at any point stores the run whole or not at
    all, and the store stays usable."""
    await store.create(record("s1"))
    stored: list[Message] = []
    for i in range(24):
        messages = [user(f"q{i}", float(i)), *tool_round(f"c{i}", float(i)), assistant(f"a{i}")]
        await store.begin_run("s1", f"r{i}", lease_s=60.0, now=float(i))
        task = asyncio.create_task(store.finish_run("s1", f"r{i}", outcome(messages)))
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            stored += messages
        except asyncio.CancelledError:
            got = await store.get("s1")
            assert got is not None
            if got.active_run_id:  # not committed: the run still holds the lease
                await store.abandon_run("s1", f"r{i}", "cancelled", float(i))
            else:  # committed before the cancellation took effect
                stored += messages
        history = await store.load_history("s1")
        assert history == stored
        assert (await store.get("s1")).message_count == len(stored)  # type: ignore[union-attr]


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
    await store.begin_run("s2", "r3", lease_s=60.0, now=310.0)  # the server "dies" mid-run
    records = {s: await store.get(s) for s in ("s1", "s2")}
    transcript = await store.transcript("s1")
    await store.close()

    restarted = await backend.open()
    assert {s: await restarted.get(s) for s in ("s1", "s2")} == records
    assert await restarted.transcript("s1") == transcript
    assert (await restarted.load_history("s1"))[1:] == [user("x", 40.0)]
    assert await restarted.recover_interrupted(1000.0) == ["s2"]
    assert (await restarted.get("s2")).last_run_stop_reason == INTERRUPTED  # type: ignore[union-attr]
    await restarted.begin_run("s2", "r4", lease_s=60.0, now=1001.0)


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


@pytest_asyncio.fixture(loop_scope="session")
async def pg_backend(pg_server: PgServer) -> AsyncIterator[Backend]:  # noqa: F811
    dsn = await pg_server.new_database()
    b = Backend("postgres", lambda: PostgresSessionStore(dsn, max_size=4), dsn=dsn)
    yield b
    for store in b.opened:
        await store.close()


async def test_replicas_share_sessions_and_one_gets_the_lease(pg_backend: Backend) -> None:
    one, two = await pg_backend.open(), await pg_backend.open()
    await one.create(record("s1"))
    assert await two.get("s1") == await one.get("s1")
    assert (await two.find_open("assistant", "me")).id == "s1"  # type: ignore[union-attr]

    for attempt in range(5):  # race both replicas for the same session, repeatedly
        results = await asyncio.gather(
            one.begin_run("s1", f"a{attempt}", lease_s=60.0, now=100.0 + attempt),
            two.begin_run("s1", f"b{attempt}", lease_s=60.0, now=100.0 + attempt),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        error = errors[0]
        assert isinstance(error, FailedPreconditionError) and error.reason == "RUN_ACTIVE"
        winner_store, winner = (one, f"a{attempt}") if results[0] is None else (two, f"b{attempt}")
        assert error.metadata == {"session_id": "s1", "active_run_id": winner, "lease_expired": "false"}
        other = two if winner_store is one else one
        assert (await other.get("s1")).active_run_id == winner  # type: ignore[union-attr]
        await winner_store.finish_run("s1", winner, outcome([user(f"m{attempt}")], at=200.0))
    assert [m.content for m in await two.load_history("s1")] == [f"m{i}" for i in range(5)]


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
            lambda: store.begin_run("s1", "r1", lease_s=60.0, now=1.0),
            lambda: store.load_history("s1"),
        ):
            with pytest.raises(UnavailableError) as caught:
                await call()
            assert caught.value.reason == "STORE_UNAVAILABLE"
        await proxy.start()  # back on the same port: the pool reconnects
        assert (await store.get("s1")).active_run_id == ""  # type: ignore[union-attr]
        await store.begin_run("s1", "r1", lease_s=60.0, now=1.0)
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
    await one.put_agent(agent("shared", model="m"), replace=False)
    assert (await two.get_agent("shared")).config == {"name": "shared", "model": "m"}
    assert await two.delete_agent("shared")
    assert await one.get_agent("shared") is None


async def test_run_owner_is_the_latest_run_and_shared(backend: Backend) -> None:
    one = await backend.open()
    await one.create(record("s1"))
    assert await one.get_run_owner("s1") is None
    await one.set_run_owner("s1", "r1", "10.0.0.1:50051")
    await one.set_run_owner("s1", "r2", "10.0.0.2:50051")
    assert await one.get_run_owner("s1") == ("r2", "10.0.0.2:50051")
    if backend.kind != "memory":
        two = await backend.open()
        assert await two.get_run_owner("s1") == ("r2", "10.0.0.2:50051")
    await one.delete("s1")
    assert await one.get_run_owner("s1") is None
