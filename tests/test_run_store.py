"""The run half of the store contract, on every store (memory, SQLite on a
real file, PostgreSQL on a real server): the run lease, checkpoints, run
records, claims after a crash or a handover, the durable event log, and
the migration of a database made before runs were stored."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from pilothouse.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.store.base import (
    INTERRUPTED,
    Checkpoint,
    CompactMarker,
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.store.codec import ITEM_COLUMNS, encode_item
from pilothouse.runtime.store.migrations import MIGRATIONS
from pilothouse.runtime.store.postgres import PostgresSessionStore
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.pg import PgServer
from tests.stores import (
    Backend,
    assistant,
    begin,
    conversation,
    event,
    final,
    plant_transcript_row,
    record,
    run,
    run_record,
    tool_round,
    user,
)

pytest_plugins = ["tests.store_fixtures"]


def unanswered_calls(history: list[Message]) -> list[str]:
    """Tool-call ids of assistant messages without their result: empty for a
    valid history."""
    answered = {m.tool_call_id for m in history if m.role is Role.TOOL}
    return [c.id for m in history for c in m.tool_calls if c.id not in answered]


# --- the lease ------------------------------------------------------------------


async def test_one_run_at_a_time(store: SessionStore) -> None:
    await store.create(record("s1"))
    started = await begin(store, "s1", "r1", now=100.0)
    assert started.active_run_id == "r1" and started == await store.get("s1")
    with pytest.raises(FailedPreconditionError) as caught:
        await begin(store, "s1", "r2", now=101.0)
    assert caught.value.reason == "RUN_ACTIVE"
    assert caught.value.metadata == {
        "session_id": "s1", "active_run_id": "r1", "lease_expired": "false",
    }  # fmt: skip
    assert await store.get_run("r2") is None  # nothing written
    done = await store.checkpoint("s1", "r1", final([user("hi")], at=102.0))
    assert done.active_run_id == ""
    await begin(store, "s1", "r2", now=103.0)
    assert (await store.get("s1")).active_run_id == "r2"  # type: ignore[union-attr]


async def test_closed_session_takes_no_run(store: SessionStore) -> None:
    await store.create(record("s1"))
    closed = await store.set_state("s1", SessionState.CLOSED, 150.0)
    assert closed.state is SessionState.CLOSED and closed.updated_at == 150.0
    with pytest.raises(FailedPreconditionError) as caught:
        await begin(store, "s1", "r1", now=151.0)
    assert caught.value.reason == "SESSION_CLOSED"
    assert await store.load_history("s1") == [] and await store.get_run("r1") is None


async def test_renew_extends_the_lease(store: SessionStore) -> None:
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=100.0, lease_s=10.0)
    await store.checkpoint("s1", "r1", Checkpoint(now=101.0, run=RunUpdate(
        status=RunStatus.FINISHED, ended_at=101.0)))  # fmt: skip  # ended, lease still held
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=108.0) is True
    with pytest.raises(FailedPreconditionError):
        await begin(store, "s1", "r2", now=115.0, lease_s=10.0)
    assert await store.renew_run("s1", "other", lease_s=10.0, now=115.0) is False
    await begin(store, "s1", "r2", now=118.0, lease_s=10.0)


async def test_an_expired_lease_of_a_live_run_waits_for_its_resume(store: SessionStore) -> None:
    """A new run does not overwrite a run whose process died: it is for
    `claim_runs` to resume (RUN_ACTIVE with lease_expired "true")."""
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=100.0, lease_s=10.0)
    with pytest.raises(FailedPreconditionError) as caught:
        await begin(store, "s1", "r2", now=500.0)
    assert caught.value.reason == "RUN_ACTIVE"
    assert caught.value.metadata["lease_expired"] == "true"
    assert (await store.get("s1")).active_run_id == "r1"  # type: ignore[union-attr]
    assert (await store.get_run("r1")).status is RunStatus.RUNNING  # type: ignore[union-attr]


async def test_an_expired_lease_of_an_ended_run_is_taken_over(store: SessionStore) -> None:
    """A run whose record ended but whose process died before its final
    checkpoint: a new run takes the session, the old one is recorded as
    interrupted and loses the lease (no renewal, its writes refused)."""
    await store.create(record("s1"))
    await run(store, "s1", "r0", [user("kept")])
    await begin(store, "s1", "r1", now=100.0, lease_s=10.0)
    ended = RunUpdate(status=RunStatus.INTERRUPTED, ended_at=101.0)
    await store.checkpoint("s1", "r1", Checkpoint(now=101.0, run=ended))
    with pytest.raises(FailedPreconditionError) as caught:
        await begin(store, "s1", "r2", now=109.9, lease_s=10.0)
    assert caught.value.metadata["lease_expired"] == "false"
    taken = await begin(store, "s1", "r2", now=110.0, lease_s=10.0)
    assert (taken.active_run_id, taken.last_run_id, taken.last_run_stop_reason) == (
        "r2", "r1", INTERRUPTED,
    )  # fmt: skip
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=111.0) is False
    with pytest.raises(FailedPreconditionError) as caught:
        await store.checkpoint("s1", "r1", final([user("late")], compact_summary="lost"))
    assert caught.value.reason == "LEASE_LOST"
    assert caught.value.metadata == {"session_id": "s1", "run_id": "r1"}
    assert await store.transcript("s1") == [user("kept")]
    assert await store.get("s1") == taken


async def test_a_record_less_active_run_is_taken_over(durable: Backend) -> None:
    """An active run id without a record (a run of a server from before
    run records): expired, a new run takes the session over."""
    store = await durable.open()
    await store.create(record("s1"))
    await begin(store, "s1", "old", now=100.0, lease_s=10.0)
    await durable.sql("DELETE FROM runs WHERE id = ?", "old")
    with pytest.raises(FailedPreconditionError):
        await begin(store, "s1", "r2", now=105.0)
    taken = await begin(store, "s1", "r2", now=110.0)
    assert (taken.active_run_id, taken.last_run_id, taken.last_run_stop_reason) == (
        "r2", "old", INTERRUPTED,
    )  # fmt: skip


async def test_a_finished_run_writes_no_more(store: SessionStore) -> None:
    """After its final checkpoint a run holds no lease: a further checkpoint
    (compact marker and all) is LEASE_LOST and writes nothing."""
    await store.create(record("s1"))
    await run(store, "s1", "r1", conversation(3))
    before = await store.get("s1")
    with pytest.raises(FailedPreconditionError) as caught:
        await store.checkpoint("s1", "r1", final([user("x")], compact_summary="lost",
                                                  events=[event("r1", 9)]))  # fmt: skip
    assert caught.value.reason == "LEASE_LOST"
    assert await store.transcript("s1") == conversation(3)
    assert await store.get("s1") == before
    assert await store.list_events("r1", 0, 10) == []
    assert (await store.get_run("r1")).stop_reason == "text_response"  # type: ignore[union-attr]


# --- checkpoints ----------------------------------------------------------------


async def test_final_checkpoint_stores_messages_and_metadata(store: SessionStore) -> None:
    await store.create(record("s1", uptime_s=1.0))
    messages = [user("q"), *tool_round("c1"), assistant("a")]
    await begin(store, "s1", "r1", now=150.0)
    done = await store.checkpoint(
        "s1", "r1", final(messages, at=250.0, usage=Usage(100, 20, 120, 50, 7), uptime_s=2.5)
    )
    assert done == await store.get("s1")
    assert done.message_count == 4
    assert done.uptime_s == pytest.approx(3.5)
    assert done.updated_at == 250.0
    assert (done.last_run_id, done.last_run_stop_reason) == ("r1", "text_response")
    assert done.last_run_usage == Usage(100, 20, 120, 50, 7)
    assert done.active_run_id == ""
    finished = await store.get_run("r1")
    assert finished is not None
    assert (finished.status, finished.stop_reason, finished.ended_at) == (
        RunStatus.FINISHED, "text_response", 250.0,
    )  # fmt: skip
    assert finished.usage == Usage(100, 20, 120, 50, 7)
    # A run that stored nothing (cancelled, or failed: what abandon did)
    # still counts its uptime and last-run fields.
    await begin(store, "s1", "r2", now=260.0)
    done = await store.checkpoint("s1", "r2", final(at=270.0, stop_reason="error"))
    assert done.message_count == 4 and done.last_run_stop_reason == "error"
    assert done.uptime_s == pytest.approx(5.0) and done.updated_at == 270.0
    assert await store.load_history("s1") == messages
    await begin(store, "s1", "r3", now=303.0)


async def test_the_final_checkpoint_takes_stop_reason_and_usage_from_the_record(
    store: SessionStore,
) -> None:
    """Fields the final checkpoint leaves unset come from the run record."""
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=150.0)
    await store.checkpoint("s1", "r1", Checkpoint(now=151.0, run=RunUpdate(
        usage=Usage(7, 3, 10), stop_reason="max_iterations")))  # fmt: skip
    done = await store.checkpoint("s1", "r1", Checkpoint(now=152.0, final=True))
    assert (done.last_run_stop_reason, done.last_run_usage) == ("max_iterations", Usage(7, 3, 10))
    assert done.uptime_s == 0.0


async def test_history_is_valid_at_every_checkpoint(store: SessionStore) -> None:
    """A tool-call turn as the runtime stores it: the user message with
    `begin_run`, each round (assistant tool calls and their results) in its
    own checkpoint, the answer in the final one."""
    await store.create(record("s1"))
    question = user("What is 1+1, then 2+2?", 100.0, sender="alice")
    started = await begin(store, "s1", "r1", now=100.0, messages=[question],
                          events=[event("r1", 1, "run_started")])  # fmt: skip
    assert (started.message_count, started.updated_at) == (1, 100.0)
    expected = [question]
    assert await store.load_history("s1") == expected
    for i in range(2):
        round_messages = tool_round(f"c{i}", 101.0 + i)
        state = {"round": i + 1, "pending": []}
        cp = Checkpoint(
            now=101.0 + i,
            messages=round_messages,
            events=[event("r1", 2 + 2 * i), event("r1", 3 + 2 * i, "tool_result")],
            run=RunUpdate(iterations=i + 1, usage=Usage(10 * (i + 1)), state=state),
        )
        got = await store.checkpoint("s1", "r1", cp)
        expected += round_messages
        history = await store.load_history("s1")
        assert history == expected and unanswered_calls(history) == []
        assert got.message_count == len(expected) and got.updated_at == 101.0 + i
        assert got.active_run_id == "r1"
        stored = await store.get_run("r1")
        assert stored is not None
        assert (stored.iterations, stored.state, stored.last_sequence) == (i + 1, state, 3 + 2 * i)
        assert stored.status is RunStatus.RUNNING
    answer = assistant("2, then 4.", 110.0)
    done = await store.checkpoint("s1", "r1", final([answer], at=110.0, events=[event("r1", 6, "done")]))
    assert await store.load_history("s1") == [*expected, answer]
    assert done.message_count == 6 and done.active_run_id == ""
    assert [e.sequence for e in await store.list_events("r1", 0, 100)] == [1, 2, 3, 4, 5, 6]


async def test_a_checkpoint_with_a_compact_marker(store: SessionStore) -> None:
    """A compaction during a run: the messages before it, the marker (stamped
    with the checkpoint's time), the messages after it; the history starts
    at the marker."""
    await store.create(record("s1"))
    await run(store, "s1", "r0", conversation(2))
    await begin(store, "s1", "r1", now=200.0, messages=[user("long question", 200.0)])
    before = tool_round("c1", 201.0)
    after = tool_round("c2", 202.0)
    got = await store.checkpoint("s1", "r1", Checkpoint(
        now=203.0, messages_before_compact=before, compact_summary="sum", messages=after))  # fmt: skip
    summary = Message.user("sum")
    summary.created_at = 203.0
    assert got.message_count == 3 and got.updated_at == 203.0
    assert await store.load_history("s1") == [summary, *after]
    assert await store.list_messages("s1", 0, 1, newest_first=True) == after[-1:]
    done = await store.checkpoint("s1", "r1", final([assistant("done", 204.0)], at=204.0))
    assert done.message_count == 4
    assert await store.transcript("s1") == [
        *conversation(2), user("long question", 200.0), *before, CompactMarker("sum", 203.0),
        *after, assistant("done", 204.0),
    ]  # fmt: skip


async def test_failed_checkpoint_leaves_nothing_partial(durable: Backend) -> None:
    """A checkpoint that fails half-way (its second transcript row collides
    with a row planted behind the store's back) rolls back entirely: no
    message, no event, no record or session change, the lease still held."""
    store = await durable.open()
    await store.create(record("s1"))
    await run(store, "s1", "r0", conversation(2))
    await begin(store, "s1", "r1", now=300.0)
    before, run_before = await store.get("s1"), await store.get_run("r1")
    await plant_transcript_row(durable, "s1", seq=3)  # the checkpoint's second message's seq
    cp = final(conversation(3, start=50.0), at=400.0, events=[event("r1", 1)])
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await store.checkpoint("s1", "r1", cp)
    assert await store.get("s1") == before and await store.get_run("r1") == run_before
    assert await store.load_history("s1") == conversation(2)
    assert await store.list_messages("s1", 0, 10, newest_first=True) == conversation(2)[::-1]
    assert await store.list_events("r1", 0, 10) == []


async def test_cancelled_checkpoints_leave_whole_rounds_only(store: SessionStore) -> None:
    """Cancelling `checkpoint` at any point (also while its transaction is
    being opened) stores the round whole or not at all, and the store stays
    usable."""
    await store.create(record("s1"))
    stored: list[Message] = []
    await begin(store, "s1", "r", now=0.0)
    for i in range(24):
        messages = [*tool_round(f"c{i}", float(i)), assistant(f"a{i}", float(i))]
        cp = Checkpoint(now=float(i), messages=messages, events=[event("r", i + 1)])
        task = asyncio.create_task(store.checkpoint("s1", "r", cp))
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            stored += messages
        except asyncio.CancelledError:
            if await store.list_events("r", i, 1):  # committed before the cancel took effect
                stored += messages
        history = await store.load_history("s1")
        assert history == stored and unanswered_calls(history) == []
        assert (await store.get("s1")).message_count == len(stored)  # type: ignore[union-attr]
    done = await store.checkpoint("s1", "r", final(at=30.0))
    assert done.active_run_id == "" and done.message_count == len(stored)


async def test_cancelled_begins_start_whole_runs_only(store: SessionStore) -> None:
    await store.create(record("s1"))
    for i in range(12):
        task = asyncio.create_task(begin(store, "s1", f"r{i}", now=float(i),
                                         messages=[user(f"q{i}", float(i))]))  # fmt: skip
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        got = await store.get("s1")
        assert got is not None
        started = await store.get_run(f"r{i}")
        assert (got.active_run_id == f"r{i}") == (started is not None)
        if started is not None:
            assert (await store.load_history("s1"))[-1] == user(f"q{i}", float(i))
            await store.checkpoint("s1", f"r{i}", final(at=float(i)))


# --- run records ------------------------------------------------------------------


async def test_run_records_keep_every_field(store: SessionStore) -> None:
    await store.create(record("s1"))
    full = run_record(
        "r1", content="héllo \x00 nul and \udc80 surrogate", sender="alice\x00", agent_version=3,
        agent_config={"name": "assistant", "tools": ["calculate"], "nested": {"x": [1, 2.5]}},
        options={"max_iterations": 4, "thinking": True}, idempotency_key="key-\x00-1",
        owner="10.0.0.1:50051",
    )  # fmt: skip
    await store.insert_run(full)
    got = await store.get_run("r1")
    assert got == full
    assert await store.find_run("s1", "key-\x00-1") == full
    assert await store.latest_run("s1") == full
    got.agent_config["tools"].append("mutated")  # a copy
    assert (await store.get_run("r1")).agent_config["tools"] == ["calculate"]  # type: ignore[union-attr]
    assert await store.get_run("nope") is None
    assert await store.find_run("s1", "other") is None and await store.find_run("s1", "") is None
    assert await store.latest_run("nope") is None


async def test_begin_starts_a_new_or_a_queued_run(store: SessionStore) -> None:
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=100.0, run={"owner": "a:1"})
    started = await store.get_run("r1")
    assert started is not None
    assert (started.status, started.started_at, started.owner) == (RunStatus.RUNNING, 100.0, "a:1")
    await store.insert_run(run_record("q1", at=101.0, owner="b:1"))
    assert (await store.get_run("q1")).status is RunStatus.QUEUED  # type: ignore[union-attr]
    await store.checkpoint("s1", "r1", final(at=102.0))
    await store.begin_run("s1", "q1", lease_s=60.0, now=103.0, messages=[user("queued", 103.0)])
    queued = await store.get_run("q1")
    assert queued is not None
    assert (queued.status, queued.started_at, queued.owner) == (RunStatus.RUNNING, 103.0, "b:1")
    assert (await store.get("s1")).active_run_id == "q1"  # type: ignore[union-attr]


async def test_a_queued_run_ends_without_starting(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.insert_run(run_record("q1"))
    cancelled = RunUpdate(status=RunStatus.FINISHED, stop_reason="cancelled", ended_at=5.0)
    assert await store.end_queued_run("q1", cancelled, [event("q1", 1, "done")]) is True
    got = await store.get_run("q1")
    assert got is not None
    assert (got.status, got.stop_reason, got.ended_at, got.last_sequence) == (
        RunStatus.FINISHED, "cancelled", 5.0, 1,
    )  # fmt: skip
    assert await store.end_queued_run("q1", cancelled, [event("q1", 2)]) is False
    assert await store.end_queued_run("nope", cancelled) is False
    assert [e.sequence for e in await store.list_events("q1", 0, 10)] == [1]
    await begin(store, "s1", "r1")
    assert await store.end_queued_run("r1", cancelled) is False  # running, not queued
    assert (await store.get_run("r1")).status is RunStatus.RUNNING  # type: ignore[union-attr]


async def test_begin_needs_the_record_of_a_run_it_does_not_create(store: SessionStore) -> None:
    """Without `new_run` the run must have a record on that session."""
    await store.create(record("s1"))
    await store.create(record("s2"))
    await store.insert_run(run_record("other", "s2"))
    for run_id in ("nope", "other"):
        with pytest.raises(NotFoundError) as caught:
            await store.begin_run("s1", run_id, lease_s=60.0, now=1.0)
        assert caught.value.reason == "RUN_NOT_FOUND"
        assert caught.value.metadata == {"session_id": "s1", "run_id": run_id}
    assert (await store.get("s1")).active_run_id == ""  # type: ignore[union-attr]


async def test_idempotency_keys_are_unique_per_session(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await begin(store, "s1", "r1", run={"idempotency_key": "k1"})
    for attempt in (
        lambda: store.insert_run(run_record("r2", idempotency_key="k1")),
        lambda: begin(store, "s1", "r3", run={"idempotency_key": "k1"}),
    ):
        with pytest.raises(AlreadyExistsError) as caught:
            await attempt()
        assert caught.value.reason == "RUN_EXISTS"
        assert caught.value.metadata == {"session_id": "s1", "run_id": "r1"}
    with pytest.raises(AlreadyExistsError) as caught:  # a taken id, wherever it is
        await store.insert_run(run_record("r1", "s2"))
    assert caught.value.metadata["run_id"] == "r1"
    await store.insert_run(run_record("r4", "s2", idempotency_key="k1"))  # another session
    await store.insert_run(run_record("r5"))  # no key: never a clash
    await store.insert_run(run_record("r6"))
    assert (await store.find_run("s1", "k1")).id == "r1"  # type: ignore[union-attr]
    assert (await store.find_run("s2", "k1")).id == "r4"  # type: ignore[union-attr]
    assert {r.id for r in await store.list_runs("s1", limit=10)} == {"r1", "r5", "r6"}
    with pytest.raises(NotFoundError):
        await store.insert_run(run_record("r7", "nope"))


async def test_the_same_key_begun_twice_at_once_starts_one_run(backend: Backend) -> None:
    """Two stores on the same storage (two replicas) start the same
    idempotency key at once: one run; the other gets RUN_EXISTS naming it."""
    one = await backend.open()
    two = await backend.open() if backend.durable else one
    for i in range(5):
        await one.create(record(f"s{i}"))
        results = await asyncio.gather(
            begin(one, f"s{i}", f"a{i}", run={"idempotency_key": "retry"}),
            begin(two, f"s{i}", f"b{i}", run={"idempotency_key": "retry"}),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        winner = f"a{i}" if not isinstance(results[0], BaseException) else f"b{i}"
        assert isinstance(errors[0], AlreadyExistsError), errors[0]
        assert errors[0].metadata == {"session_id": f"s{i}", "run_id": winner}
        assert [r.id for r in await two.list_runs(f"s{i}", limit=10)] == [winner]
        assert (await one.find_run(f"s{i}", "retry")).id == winner  # type: ignore[union-attr]


async def test_list_runs_pages_newest_first_and_filters_by_status(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await run(store, "s1", "r1", [], now=10.0)
    await run(store, "s1", "r2", [], now=20.0)
    await begin(store, "s1", "r3", now=30.0)
    await store.insert_run(run_record("q2", at=40.0))
    await store.insert_run(run_record("q1", at=40.0))  # same time: by id, descending
    await store.insert_run(run_record("x1", "s2", at=50.0))

    async def ids(**args) -> list[str]:
        return [r.id for r in await store.list_runs("s1", **{"limit": 100, **args})]

    assert await ids() == ["q2", "q1", "r3", "r2", "r1"]
    assert await ids(limit=2) == ["q2", "q1"]
    assert await ids(limit=2, before=(40.0, "q1")) == ["r3", "r2"]
    assert await ids(limit=2, before=(40.0, "q2")) == ["q1", "r3"]
    assert await ids(limit=2, before=(20.0, "r2")) == ["r1"]
    assert await ids(before=(10.0, "r1")) == []
    assert await ids(statuses=[RunStatus.FINISHED]) == ["r2", "r1"]
    assert await ids(statuses=[RunStatus.QUEUED, RunStatus.RUNNING]) == ["q2", "q1", "r3"]
    assert await ids(statuses=[RunStatus.QUEUED], before=(40.0, "q2")) == ["q1"]
    assert await ids(statuses=[RunStatus.INTERRUPTED]) == []
    assert await ids(limit=0) == []
    assert (await store.latest_run("s1")).id == "q2"  # type: ignore[union-attr]
    assert [r.id for r in await store.list_runs("s2", limit=10)] == ["x1"]
    with pytest.raises(NotFoundError):
        await store.list_runs("nope", limit=10)


async def test_the_owner_is_on_the_latest_run_and_shared(backend: Backend) -> None:
    """What `set_run_owner` / `get_run_owner` answered before: which replica
    runs a session's latest run."""
    one = await backend.open()
    await one.create(record("s1"))
    assert await one.latest_run("s1") is None
    await run(one, "s1", "r1", [], now=10.0)
    await begin(one, "s1", "r2", now=20.0, run={"owner": "10.0.0.2:50051"})
    latest = await one.latest_run("s1")
    assert latest is not None and (latest.id, latest.owner) == ("r2", "10.0.0.2:50051")
    if backend.durable:
        two = await backend.open()
        assert await two.latest_run("s1") == latest
    await one.delete("s1")
    assert await one.latest_run("s1") is None


# --- claims ---------------------------------------------------------------------


async def test_claim_takes_expired_leases_only(store: SessionStore) -> None:
    for session_id in ("expired", "live", "idle", "expired2", "no-record-left"):
        await store.create(record(session_id))
    await begin(store, "expired", "r1", now=100.0, lease_s=10.0, run={"owner": "dead:1"})
    await begin(store, "expired2", "r2", now=99.0, lease_s=5.0, run={"owner": "dead:1"})
    await begin(store, "live", "r3", now=100.0, lease_s=100.0, run={"owner": "alive:1"})
    # An ended record still holding the lease: nothing to resume.
    await begin(store, "no-record-left", "r4", now=100.0, lease_s=10.0)
    await store.checkpoint("no-record-left", "r4", Checkpoint(
        now=101.0, run=RunUpdate(status=RunStatus.FINISHED, ended_at=101.0)))  # fmt: skip
    claimed = await store.claim_runs("new:1", now=150.0, lease_s=30.0)
    assert [(r.id, r.owner, r.attempt, r.status) for r in claimed] == [
        ("r2", "new:1", 1, RunStatus.RUNNING), ("r1", "new:1", 1, RunStatus.RUNNING),
    ]  # fmt: skip  (oldest first)
    for session_id in ("expired", "expired2"):
        got = await store.get(session_id)
        assert got is not None and got.active_run_id in ("r1", "r2")
    lost = await store.get("no-record-left")
    assert lost is not None
    assert (lost.active_run_id, lost.last_run_id, lost.last_run_stop_reason) == (
        "", "r4", INTERRUPTED,
    )  # fmt: skip
    assert (await store.get("live")).active_run_id == "r3"  # type: ignore[union-attr]
    # The leases were renewed: nothing more to claim until they expire again.
    assert await store.claim_runs("other:1", now=179.0, lease_s=30.0) == []
    again = await store.claim_runs("other:1", now=180.0, lease_s=30.0)
    assert sorted((r.id, r.owner, r.attempt) for r in again) == [
        ("r1", "other:1", 2), ("r2", "other:1", 2),
    ]  # fmt: skip
    await begin(store, "no-record-left", "r5", now=181.0)


async def test_a_replica_that_lost_its_run_to_a_takeover_cannot_write(store: SessionStore) -> None:
    """Fencing: replica A paused past its lease; B claimed the run. A's
    renewals and checkpoints that name A as the owner are refused, B's go on."""
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=100.0, lease_s=10.0, run={"owner": "a:1"})
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=105.0, owner="a:1")
    [claimed] = await store.claim_runs("b:1", now=200.0, lease_s=30.0)
    assert claimed.owner == "b:1"
    assert not await store.renew_run("s1", "r1", lease_s=10.0, now=201.0, owner="a:1")
    with pytest.raises(FailedPreconditionError) as caught:
        await store.checkpoint("s1", "r1", Checkpoint(now=202.0, messages=[user("late")], owner="a:1"))
    assert caught.value.reason == "LEASE_LOST"
    assert "late" not in [m.content for m in await store.load_history("s1")]
    assert await store.renew_run("s1", "r1", lease_s=10.0, now=203.0, owner="b:1")
    await store.checkpoint("s1", "r1", Checkpoint(now=204.0, messages=[user("b's")], owner="b:1"))
    assert [m.content for m in await store.load_history("s1")][-1] == "b's"


async def test_a_released_lease_is_claimed_at_once(store: SessionStore) -> None:
    """A draining replica hands its run over: the run keeps the session
    (a new run cannot take it) and any replica claims it at once."""
    await store.create(record("s1"))
    await begin(store, "s1", "r1", now=100.0, lease_s=60.0, run={"owner": "draining:1"})
    released = await store.checkpoint("s1", "r1", Checkpoint(
        now=101.0, messages=tool_round("c1", 101.0), release=True,
        run=RunUpdate(state={"resume": "from round 2"})))  # fmt: skip
    assert released.active_run_id == "r1"
    with pytest.raises(FailedPreconditionError) as caught:
        await begin(store, "s1", "r2", now=102.0)
    assert caught.value.metadata["lease_expired"] == "true"
    claimed = await store.claim_runs("survivor:1", now=102.0, lease_s=60.0)
    assert [(r.id, r.owner, r.attempt, r.state) for r in claimed] == [
        ("r1", "survivor:1", 1, {"resume": "from round 2"}),
    ]  # fmt: skip
    assert await store.claim_runs("third:1", now=103.0, lease_s=60.0) == []
    done = await store.checkpoint("s1", "r1", final([assistant("resumed", 104.0)], at=104.0))
    assert done.active_run_id == "" and done.message_count == 3


async def test_a_restarted_process_claims_its_own_runs_at_once(store: SessionStore) -> None:
    """`stale_owner`: a process restarted at the same address settles its
    own runs without waiting for their leases to expire."""
    await store.create(record("mine"))
    await store.create(record("theirs"))
    await begin(store, "mine", "r1", now=100.0, lease_s=60.0, run={"owner": "10.0.0.1:1"})
    await begin(store, "theirs", "r2", now=100.0, lease_s=60.0, run={"owner": "10.0.0.2:1"})
    assert await store.claim_runs("10.0.0.1:1", now=101.0, lease_s=60.0) == []
    claimed = await store.claim_runs("10.0.0.1:1", now=101.0, lease_s=60.0, stale_owner="10.0.0.1:1")
    assert [(r.id, r.owner, r.attempt) for r in claimed] == [("r1", "10.0.0.1:1", 1)]
    assert (await store.get_run("r2")).attempt == 0  # type: ignore[union-attr]


async def test_queued_runs_are_claimed_with_their_session(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await begin(store, "s1", "r1", now=100.0, lease_s=10.0, run={"owner": "dead:1"})
    await store.insert_run(run_record("q2", at=102.0, owner="dead:1"))
    await store.insert_run(run_record("q1", at=101.0, owner="dead:1"))
    await store.insert_run(run_record("q3", "s2", at=103.0, owner="alive:1"))  # s2 is idle
    claimed = await store.claim_runs("new:1", now=200.0, lease_s=10.0)
    assert [(r.id, r.status, r.owner) for r in claimed] == [
        ("r1", RunStatus.RUNNING, "new:1"),
        ("q1", RunStatus.QUEUED, "new:1"),
        ("q2", RunStatus.QUEUED, "new:1"),
    ]
    assert [r.attempt for r in claimed] == [1, 0, 0]
    assert (await store.get_run("q3")).owner == "alive:1"  # type: ignore[union-attr]


async def test_two_replicas_claiming_at_once_split_the_runs(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    for i in range(20):
        await one.create(record(f"s{i}"))
        await begin(one, f"s{i}", f"r{i}", now=100.0, lease_s=10.0, run={"owner": "dead:1"})
    for attempt in range(3):
        now = 200.0 + 100 * attempt
        first, second = await asyncio.gather(
            one.claim_runs("one:1", now=now, lease_s=10.0),
            two.claim_runs("two:1", now=now, lease_s=10.0),
        )
        a, b = {r.id for r in first}, {r.id for r in second}
        assert not a & b and a | b == {f"r{i}" for i in range(20)}
        for claimed, owner in ((first, "one:1"), (second, "two:1")):
            assert all(r.owner == owner for r in claimed)
        records = [await one.get_run(f"r{i}") for i in range(20)]
        assert {r.attempt for r in records if r} == {attempt + 1}


# --- the event log ----------------------------------------------------------------


async def test_events_append_list_and_skip_duplicates(store: SessionStore) -> None:
    await store.create(record("s1"))
    await begin(store, "s1", "r1", events=[event("r1", 1, "run_started")])
    await store.append_events([event("r1", 2), event("r1", 3), event("r2", 1)])
    await store.append_events([event("r1", 3), event("r1", 4)])  # 3 again: skipped
    duplicate = dataclasses.replace(event("r1", 2), payload='{"changed":true}')
    await store.append_events([duplicate, duplicate])
    await store.append_events([])
    got = await store.list_events("r1", 0, 100)
    assert got == [event("r1", 1, "run_started"), event("r1", 2), event("r1", 3), event("r1", 4)]
    assert await store.list_events("r1", 2, 1) == [event("r1", 3)]
    assert await store.list_events("r1", 4, 10) == []
    assert await store.list_events("r1", 0, 0) == []
    assert await store.list_events("unknown", 0, 10) == []
    assert (await store.get_run("r1")).last_sequence == 4  # type: ignore[union-attr]
    odd = dataclasses.replace(event("r1", 5), payload='{"text":"nul \\u0000 ✓ \udc80"}')
    await store.append_events([odd])
    stored = (await store.list_events("r1", 4, 1))[0]
    assert stored.sequence == 5 and stored.kind == "text_delta"
    assert json.loads(stored.payload) == json.loads(odd.payload)


async def test_prune_keeps_records_and_each_runs_last_event(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await begin(store, "s1", "old", now=10.0, events=[event("old", i) for i in (1, 2, 3)])
    await store.checkpoint("s1", "old", final(at=20.0, events=[event("old", 4, "done")]))
    await begin(store, "s1", "recent", now=30.0, events=[event("recent", 1), event("recent", 2)])
    await store.checkpoint("s1", "recent", final(at=100.0, events=[event("recent", 3, "done")]))
    await begin(store, "s2", "live", now=5.0, events=[event("live", 1), event("live", 2)])
    assert await store.prune_events(50.0) == 3
    assert await store.list_events("old", 0, 10) == [event("old", 4, "done")]
    assert len(await store.list_events("recent", 0, 10)) == 3
    assert len(await store.list_events("live", 0, 10)) == 2
    old = await store.get_run("old")
    assert old is not None and old.status is RunStatus.FINISHED and old.last_sequence == 4
    assert await store.prune_events(50.0) == 0
    assert await store.prune_events(1000.0) == 2
    assert [e.sequence for e in await store.list_events("recent", 0, 10)] == [3]


async def test_delete_removes_runs_and_events(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    await run(store, "s1", "r1", [user("a")])
    await store.append_events([event("r1", 1), event("r1", 2)])
    await store.insert_run(run_record("q1", idempotency_key="k"))
    await run(store, "s2", "r2", [user("b")])
    await store.append_events([event("r2", 1)])
    await store.delete("s1")
    assert await store.get_run("r1") is None and await store.get_run("q1") is None
    assert await store.list_events("r1", 0, 10) == []
    assert await store.latest_run("s1") is None
    assert await store.list_events("r2", 0, 10) == [event("r2", 1)]
    # The ids and the key can be used again.
    await store.create(record("s1"))
    await run(store, "s1", "r1", [], now=500.0)
    await store.insert_run(run_record("q1", idempotency_key="k"))
    assert (await store.get_run("r1")).last_sequence == 0  # type: ignore[union-attr]


# --- replicas -----------------------------------------------------------------------


async def test_replicas_race_for_the_lease_and_one_gets_it(pg_backend: Backend) -> None:
    one, two = await pg_backend.open(), await pg_backend.open()
    await one.create(record("s1"))
    for attempt in range(5):  # race both replicas for the same session, repeatedly
        now = 100.0 + attempt
        results = await asyncio.gather(
            begin(one, "s1", f"a{attempt}", now=now), begin(two, "s1", f"b{attempt}", now=now),
            return_exceptions=True,
        )  # fmt: skip
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        error = errors[0]
        assert isinstance(error, FailedPreconditionError) and error.reason == "RUN_ACTIVE"
        won_by_one = not isinstance(results[0], BaseException)
        winner_store, winner = (one, f"a{attempt}") if won_by_one else (two, f"b{attempt}")
        assert error.metadata == {
            "session_id": "s1", "active_run_id": winner, "lease_expired": "false",
        }  # fmt: skip
        other = two if winner_store is one else one
        assert (await other.get("s1")).active_run_id == winner  # type: ignore[union-attr]
        assert await other.get_run(f"{'b' if won_by_one else 'a'}{attempt}") is None
        await winner_store.checkpoint("s1", winner, final([user(f"m{attempt}")], at=200.0))
    assert [m.content for m in await two.load_history("s1")] == [f"m{i}" for i in range(5)]


# --- migration ----------------------------------------------------------------------


async def _version_3_database(kind: str, tmp_path: Path, pg_server: PgServer | None) -> Backend:
    """A database made by a server of schema version 3 (the statements of
    migrations 1-3 as released), holding a session with a history and a
    run lease, and its run owner."""
    items = [(0, user("before the upgrade", 10.0)), (1, assistant("noted", 11.0))]
    if kind == "sqlite":
        path = tmp_path / "v3.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                         "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")  # fmt: skip
            for migration in MIGRATIONS[:3]:
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 1.0)",
                             (migration.version, migration.name))  # fmt: skip
        backend = Backend("sqlite", lambda: SqliteSessionStore(path), path=path)
    else:
        assert pg_server is not None
        dsn = await pg_server.new_database()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                               "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")  # fmt: skip
            for migration in MIGRATIONS[:3]:
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, 1.0)",
                                   migration.version, migration.name)  # fmt: skip
        finally:
            await conn.close()
        backend = Backend("postgres", lambda: PostgresSessionStore(dsn, max_size=2), dsn=dsn)
    await backend.sql(
        "INSERT INTO sessions (id, agent, created_by, created_at, updated_at, title, message_count,"
        " active_run_id, lease_until, next_seq) VALUES (?, 'assistant', 'me', 1.0, 11.0, ?, 2, ?, ?, 2)",
        "old", "From version 3", "old-run", 50.0,
    )  # fmt: skip
    columns = ", ".join(ITEM_COLUMNS)
    for seq, message in items:
        row = ("old", seq, *encode_item(message))
        await backend.sql(f"INSERT INTO transcript_items (session_id, seq, {columns}) "
                          f"VALUES ({', '.join('?' * len(row))})", *row)  # fmt: skip
    await backend.sql("INSERT INTO run_owners VALUES ('old', 'old-run', '10.0.0.1:50051')")
    return backend


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_3_database_migrates_and_runs(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("pg_server") if kind == "postgres" else None
    backend = await _version_3_database(kind, tmp_path, server)
    store = await backend.open()
    try:
        versions = await backend.sql("SELECT version FROM schema_migrations ORDER BY version")
        assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]
        old = await store.get("old")
        assert old is not None and (old.title, old.message_count) == ("From version 3", 2)
        assert await store.load_history("old") == [user("before the upgrade", 10.0),
                                                   assistant("noted", 11.0)]  # fmt: skip
        assert await store.latest_run("old") is None  # runs were not recorded then
        # The old server's interrupted run has no record: a new run takes over.
        taken = await begin(store, "old", "r1", now=100.0, messages=[user("after", 100.0)])
        assert (taken.last_run_id, taken.last_run_stop_reason) == ("old-run", INTERRUPTED)
        await store.checkpoint("old", "r1", final([assistant("upgraded", 101.0)], at=101.0,
                                                  events=[event("r1", 1, "done")]))  # fmt: skip
        assert [m.content for m in await store.load_history("old")] == [
            "before the upgrade", "noted", "after", "upgraded",
        ]  # fmt: skip
        assert (await store.get_run("r1")).last_sequence == 1  # type: ignore[union-attr]
        await store.delete("old")
    finally:
        await store.close()


def test_runs_keep_every_record_field() -> None:
    """The SQL schema has a column for every `RunRecord` field (but the
    computed `last_sequence`)."""
    from pilothouse.runtime.store.runcodec import RUN_COLUMNS

    columns = set(RUN_COLUMNS.split(", ")) - {"escaped_text"}
    assert columns == {f.name for f in dataclasses.fields(RunRecord)} - {"last_sequence"}

