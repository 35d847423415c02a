"""The event feed of the stores (`SessionStore.read_feed`), on every store:
one order over every run's events, filters, pages, positions that stay
valid, and (on PostgreSQL) no event skipped when a slower transaction
commits after a faster one."""

from __future__ import annotations

import asyncio

import asyncpg

from pilothouse.runtime.store.base import Checkpoint, SessionStore
from pilothouse.runtime.store.feed import FEED_START, FeedFilter, FeedPosition
from tests.stores import Backend, begin, event, final, record, run_record

pytest_plugins = ["tests.store_fixtures"]


async def _two_runs(store: SessionStore) -> None:
    await store.create(record("s1", agent="a", created_by="ann"))
    await store.create(record("s2", agent="b", created_by="bob"))
    await begin(store, "s1", "r1", events=[event("r1", 1, "run_started")])
    await begin(store, "s2", "r2", run={"agent": "b"}, events=[event("r2", 1, "run_started")])
    await store.append_events([event("r1", 2), event("r2", 2), event("r1", 3)])
    await store.checkpoint("s1", "r1", Checkpoint(now=160.0, events=[event("r1", 4, "done")]))


async def test_every_run_in_one_order(store: SessionStore) -> None:
    await _two_runs(store)
    page = await store.read_feed(FEED_START, 100)
    keys = [(e.stored.run_id, e.stored.sequence) for e in page.events]
    # Transactions in commit order; one transaction's events by run, then sequence.
    assert keys == [("r1", 1), ("r2", 1), ("r1", 2), ("r1", 3), ("r2", 2), ("r1", 4)]
    assert [e.position for e in page.events] == sorted(e.position for e in page.events)
    first = page.events[0]
    assert (first.session_id, first.agent, first.created_by) == ("s1", "assistant", "ann")
    assert first.stored.kind == "run_started"
    # Nothing new: the same position comes back, past everything read.
    again = await store.read_feed(page.position, 100)
    assert again.events == [] and again.position >= page.events[-1].position


async def test_pages_and_positions(store: SessionStore) -> None:
    await _two_runs(store)
    seen = []
    position = FEED_START
    while True:
        page = await store.read_feed(position, 2)
        seen.extend((e.stored.run_id, e.stored.sequence) for e in page.events)
        position = page.position
        if len(page.events) < 2:
            break
    assert len(seen) == 6 and len(set(seen)) == 6
    # A position survives its encoding; events after it come once.
    decoded = FeedPosition.decode(position.encode())
    assert decoded == position
    await store.append_events([event("r2", 3)])
    page = await store.read_feed(decoded, 10)
    assert [(e.stored.run_id, e.stored.sequence) for e in page.events] == [("r2", 3)]


async def test_filters(store: SessionStore) -> None:
    await _two_runs(store)

    async def keys(feed_filter: FeedFilter) -> list[tuple[str, int]]:
        page = await store.read_feed(FEED_START, 100, feed_filter)
        return [(e.stored.run_id, e.stored.sequence) for e in page.events]

    assert await keys(FeedFilter(agents=frozenset({"b"}))) == [("r2", 1), ("r2", 2)]
    assert await keys(FeedFilter(session_ids=frozenset({"s1"}))) == [
        ("r1", 1), ("r1", 2), ("r1", 3), ("r1", 4)
    ]
    assert await keys(FeedFilter(created_by=frozenset({"bob"}), kinds=frozenset({"run_started"}))) == [
        ("r2", 1)
    ]
    assert await keys(FeedFilter(kinds=frozenset({"done", "run_started"}))) == [
        ("r1", 1), ("r2", 1), ("r1", 4)
    ]
    # A filtered page that is not full still moves past what it scanned.
    page = await store.read_feed(FEED_START, 100, FeedFilter(agents=frozenset({"nobody"})))
    assert page.events == [] and page.position > FEED_START
    assert (await store.read_feed(page.position, 100)).events == []


async def test_upto_bounds_a_read(store: SessionStore) -> None:
    await _two_runs(store)
    everything = (await store.read_feed(FEED_START, 100)).events
    bound = everything[2].position
    page = await store.read_feed(FEED_START, 100, upto=bound)
    assert [e.position for e in page.events] == [e.position for e in everything[:3]]
    assert page.position == bound


async def test_deleted_sessions_and_pruned_events_leave_the_feed(store: SessionStore) -> None:
    await _two_runs(store)
    done = final([], at=170.0)
    done.events = [event("r2", 3, "done")]
    await store.checkpoint("s2", "r2", done)
    assert await store.prune_events(10_000.0) > 0
    page = await store.read_feed(FEED_START, 100)
    kept = {(e.stored.run_id, e.stored.sequence) for e in page.events}
    assert ("r2", 3) in kept and ("r2", 1) not in kept
    await store.delete("s1")
    page = await store.read_feed(FEED_START, 100)
    assert {e.stored.run_id for e in page.events} == {"r2"}


async def test_a_slow_transaction_is_not_skipped(pg_backend: Backend) -> None:
    """Transaction A takes its id first but commits after B: a reader that
    read B's event must still get A's later, in order."""
    store = await pg_backend.open()
    await store.create(record("s1"))
    await store.insert_run(run_record("r1"))
    await store.insert_run(run_record("r2"))
    conn = await asyncpg.connect(pg_backend.dsn)
    try:
        slow = conn.transaction()
        await slow.start()
        await conn.execute(
            "INSERT INTO run_events (run_id, sequence, time, kind, payload) "
            "VALUES ('r1', 1, 1.0, 'text_delta', '{}')"
        )
        await store.append_events([event("r2", 1)])  # commits first, larger id
        page = await store.read_feed(FEED_START, 100)
        assert page.events == []  # below the horizon of the open transaction only
        await slow.commit()
    finally:
        await conn.close()
    first = await store.read_feed(page.position, 100)
    assert [(e.stored.run_id, e.stored.sequence) for e in first.events] == [("r1", 1), ("r2", 1)]


async def test_concurrent_writers_lose_nothing(store: SessionStore) -> None:
    """Readers following the feed while many writes go on see every event
    exactly once."""
    await store.create(record("s1"))
    for n in range(8):
        await store.insert_run(run_record(f"r{n}"))
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def follow() -> None:
        position = FEED_START
        while True:
            finished = done.is_set()
            page = await store.read_feed(position, 7)
            seen.extend((e.stored.run_id, e.stored.sequence) for e in page.events)
            position = page.position
            if finished and len(page.events) < 7:
                return
            await asyncio.sleep(0)

    async def write(n: int) -> None:
        for sequence in range(1, 21):
            await store.append_events([event(f"r{n}", sequence)])

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(n) for n in range(8)))
    done.set()
    await reader
    assert sorted(seen) == sorted((f"r{n}", s) for n in range(8) for s in range(1, 21))
    assert len(seen) == len(set(seen))
