"""The event feed: every run's stored events in one order, for
subscriptions that watch many runs at once (`SessionStore.read_feed`).

Each event row carries `feed_tx`, the id of the transaction that stored it
(SQLite: a counter the store's serialised writers increment once per
transaction; PostgreSQL: the transaction id, `pg_current_xact_id()`). The
feed order is (`feed_tx`, `run_id`, `sequence`): one run's events come in
sequence order, since a run's later events are stored by later
transactions.

A reader must never skip a row that a slower transaction commits later.
Before each read the store takes a *horizon*: a `feed_tx` below which
every transaction has ended (SQLite: one past the counter, since its
writers are serialised; PostgreSQL: the oldest transaction id still in
progress, `pg_snapshot_xmin(pg_current_snapshot())`), and reads only rows
below it. The rows below a horizon never change again (new transactions
get larger ids), so a position in the feed, once read, stays valid, across
replicas and restarts.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pilothouse.runtime.store.base import StoredEvent


@dataclass(frozen=True, slots=True, order=True)
class FeedPosition:
    """A position in the feed: everything up to and including the event
    (`tx`, `run_id`, `sequence`) has been read. (`tx`, "", 0) is the
    position before every event of transaction `tx`: all of the earlier
    transactions have been read."""

    tx: int
    run_id: str = ""
    sequence: int = 0

    def encode(self) -> str:
        return f"{self.tx}.{self.run_id}.{self.sequence}"

    @classmethod
    def decode(cls, text: str) -> FeedPosition:
        """The position `encode` made; ValueError for anything else."""
        tx, run_id, sequence = text.split(".")
        position = cls(int(tx), run_id, int(sequence))
        if position.tx < 0 or position.sequence < 0 or not (run_id.isalnum() or run_id == ""):
            raise ValueError(text)
        return position


#: The start of the feed.
FEED_START = FeedPosition(0)


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which events a subscription wants; an empty set matches all."""

    agents: frozenset[str] = frozenset()
    session_ids: frozenset[str] = frozenset()
    created_by: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    def matches(self, event: FeedEvent) -> bool:
        return (
            (not self.agents or event.agent in self.agents)
            and (not self.session_ids or event.session_id in self.session_ids)
            and (not self.created_by or event.created_by in self.created_by)
            and (not self.kinds or event.stored.kind in self.kinds)
        )


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event of the feed, with its run's session, agent and the
    session's `created_by`."""

    position: FeedPosition
    stored: StoredEvent
    session_id: str
    agent: str
    created_by: str


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Events in feed order, and the position to read on from: the last
    event's, or past every event below the read's horizon when the page
    is not full."""

    events: list[FeedEvent]
    position: FeedPosition


# --- SQL (both backends) -----------------------------------------------------------

SQLITE_BUMP = "UPDATE event_feed SET last_tx = last_tx + 1"
SQLITE_INSERT_EVENT = (
    "INSERT INTO run_events (run_id, sequence, time, kind, payload, feed_tx) "
    "VALUES (?, ?, ?, ?, ?, (SELECT last_tx FROM event_feed)) ON CONFLICT DO NOTHING"
)
SQLITE_HORIZON = "SELECT last_tx + 1 FROM event_feed"
POSTGRES_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

_COLUMNS = (
    "e.feed_tx, e.run_id, e.sequence, e.time, e.kind, e.payload, r.session_id, r.agent, "
    "s.created_by"
)


def feed_query(
    after: FeedPosition,
    below_tx: int | None,
    upto: FeedPosition | None,
    limit: int,
    feed_filter: FeedFilter,
    placeholder: Callable[[int], str],
) -> tuple[str, list[Any]]:
    """The SELECT of a feed page and its parameters; `placeholder(n)` is
    the backend's n-th parameter (1-based)."""
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    where = [
        f"(e.feed_tx, e.run_id, e.sequence) > ({param(after.tx)}, {param(after.run_id)}, "
        f"{param(after.sequence)})"
    ]
    if below_tx is not None:
        where.append(f"e.feed_tx < {param(below_tx)}")
    if upto is not None:
        where.append(
            f"(e.feed_tx, e.run_id, e.sequence) <= ({param(upto.tx)}, {param(upto.run_id)}, "
            f"{param(upto.sequence)})"
        )
    for column, values in (
        ("r.agent", feed_filter.agents),
        ("r.session_id", feed_filter.session_ids),
        ("s.created_by", feed_filter.created_by),
        ("e.kind", feed_filter.kinds),
    ):
        if values:
            where.append(f"{column} IN ({', '.join(param(v) for v in sorted(values))})")
    sql = (
        f"SELECT {_COLUMNS} FROM run_events e JOIN runs r ON r.id = e.run_id "
        f"JOIN sessions s ON s.id = r.session_id WHERE {' AND '.join(where)} "
        f"ORDER BY e.feed_tx, e.run_id, e.sequence LIMIT {param(max(limit, 0))}"
    )
    return sql, params


def feed_event(row: Sequence[Any]) -> FeedEvent:
    tx, run_id, sequence = int(row[0]), row[1], int(row[2])
    return FeedEvent(
        FeedPosition(tx, run_id, sequence),
        StoredEvent(run_id, sequence, float(row[3]), row[4], row[5]),
        row[6], row[7], row[8],
    )


def page_of(
    events: list[FeedEvent], after: FeedPosition, limit: int, horizon: FeedPosition
) -> FeedPage:
    """The page and where to go on from (see `FeedPage`)."""
    if len(events) >= limit and events:
        return FeedPage(events, events[-1].position)
    return FeedPage(events, max(horizon, after, events[-1].position if events else after))


# --- the stores' implementations --------------------------------------------------------


class _SqliteConnected(Protocol):
    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]: ...


class SqliteFeed:
    """`read_feed` of the SQLite store."""

    async def read_feed(
        self: _SqliteConnected,
        after: FeedPosition,
        limit: int,
        feed_filter: FeedFilter | None = None,
        *,
        upto: FeedPosition | None = None,
    ) -> FeedPage:
        feed_filter = feed_filter or FeedFilter()
        horizon = upto
        if upto is None:
            rows = await self._read(SQLITE_HORIZON, ())
            horizon = FeedPosition(int(rows[0][0]))
        assert horizon is not None
        sql, params = feed_query(after, horizon.tx if upto is None else None, upto, limit,
                                 feed_filter, lambda n: "?")
        events = [feed_event(row) for row in await self._read(sql, tuple(params))]
        return page_of(events, after, limit, horizon)


class _PostgresConnected(Protocol):
    async def _fetch(self, sql: str, *args: Any) -> list[Any]: ...


class PostgresFeed:
    """`read_feed` of the PostgreSQL store."""

    async def read_feed(
        self: _PostgresConnected,
        after: FeedPosition,
        limit: int,
        feed_filter: FeedFilter | None = None,
        *,
        upto: FeedPosition | None = None,
    ) -> FeedPage:
        feed_filter = feed_filter or FeedFilter()
        horizon = upto
        if upto is None:
            # Its own statement, so its snapshot is older than the read's.
            rows = await self._fetch(POSTGRES_HORIZON)
            horizon = FeedPosition(int(rows[0][0]))
        assert horizon is not None
        sql, params = feed_query(after, horizon.tx if upto is None else None, upto, limit,
                                 feed_filter, lambda n: f"${n}")
        events = [feed_event(row) for row in await self._fetch(sql, *params)]
        return page_of(events, after, limit, horizon)


class MemoryFeed:
    """The memory store's feed: one transaction per write call, in a list
    kept in feed order. `_feed_owner(run_id)` gives (session_id, agent,
    created_by) of a run, None once it is gone."""

    def __init__(self) -> None:
        self._feed: list[tuple[FeedPosition, StoredEvent]] = []
        self._feed_tx = 0

    def _feed_owner(self, run_id: str) -> tuple[str, str, str] | None:
        raise NotImplementedError

    def _feed_add(self, events: Sequence[StoredEvent]) -> None:
        """Record the events one write stored, as one transaction."""
        if not events:
            return
        self._feed_tx += 1
        batch = [(FeedPosition(self._feed_tx, e.run_id, e.sequence), e) for e in events]
        self._feed.extend(sorted(batch, key=lambda item: item[0]))

    def _feed_forget(self, keep: Callable[[StoredEvent], bool]) -> None:
        self._feed = [(p, e) for p, e in self._feed if keep(e)]

    async def read_feed(
        self,
        after: FeedPosition,
        limit: int,
        feed_filter: FeedFilter | None = None,
        *,
        upto: FeedPosition | None = None,
    ) -> FeedPage:
        feed_filter = feed_filter or FeedFilter()
        horizon = upto or FeedPosition(self._feed_tx + 1)
        start = bisect.bisect_right(self._feed, after, key=lambda item: item[0])
        events: list[FeedEvent] = []
        for position, stored in self._feed[start:]:
            if position > horizon or len(events) >= limit:
                break
            owner = self._feed_owner(stored.run_id)
            if owner is None:
                continue
            event = FeedEvent(position, dataclasses.replace(stored), *owner)
            if feed_filter.matches(event):
                events.append(event)
        return page_of(events, after, limit, horizon)

