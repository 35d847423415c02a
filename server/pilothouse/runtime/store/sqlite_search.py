"""`search_sessions` of the SQLite store: the FTS5 index `message_search`
(schema: `migrations`, version 5), ranked by BM25.

A session's score is its best message's (FTS5's `bm25()` is lower for a
better match; the score is its negation). Two statements on the reader,
each one snapshot: the page of sessions (filters, ranking, paging), then
the best messages of those sessions with their snippets.
"""

from __future__ import annotations

from typing import Any

from pilothouse.runtime.messages import Role
from pilothouse.runtime.store.base import MessageMatch, SessionMatch, SessionState
from pilothouse.runtime.store.codec import RECORD_COLUMNS, record_from_row
from pilothouse.runtime.store.runcodec import dumps
from pilothouse.runtime.store.sqlite_base import SqliteBase
from pilothouse.runtime.store.textsearch import START, STOP, SearchQuery, fts5_query, unmark

#: Words of context a snippet holds (FTS5 `snippet()`'s last argument).
SNIPPET_WORDS = 24

_S_COLUMNS = ", ".join(f"s.{c}" for c in RECORD_COLUMNS.split(", "))
_HITS = """
SELECT t.session_id AS session_id, bm25(message_search) AS rank
FROM message_search JOIN message_texts t ON t.id = message_search.rowid
WHERE message_search MATCH :q
"""
#: The best `:matches` messages of each session of `:ids`: ranked first
#: without snippets, which are made for those messages only.
_MATCHES = f"""
WITH ranked AS MATERIALIZED (
    SELECT message_search.rowid AS id, t.session_id AS session_id, t.seq AS seq,
        bm25(message_search) AS rank
    FROM message_search JOIN message_texts t ON t.id = message_search.rowid
    WHERE message_search MATCH :q AND t.session_id IN (SELECT value FROM json_each(:ids))
), best AS MATERIALIZED (
    SELECT id, rank FROM (
        SELECT id, rank, row_number() OVER (PARTITION BY session_id ORDER BY rank, seq) AS n
        FROM ranked
    ) WHERE n <= :matches
)
SELECT t.session_id, t.seq, t.role, t.created_at, b.rank,
    snippet(message_search, 0, '{START}', '{STOP}', '…', {SNIPPET_WORDS})
FROM message_search JOIN best b ON b.id = message_search.rowid
    JOIN message_texts t ON t.id = message_search.rowid
WHERE message_search MATCH :q AND message_search.rowid IN (SELECT id FROM best)
ORDER BY b.rank, t.seq
"""


async def search_sessions(
    store: SqliteBase,
    query: SearchQuery,
    *,
    agent: str,
    created_by: str,
    state: SessionState | None,
    offset: int,
    limit: int,
    matches: int = 3,
) -> list[SessionMatch]:
    """`SessionStore.search_sessions` of `store` (a `SqliteSessionStore`)."""
    params: dict[str, Any] = {"q": fts5_query(query), "limit": max(limit, 0),
                              "offset": max(offset, 0)}  # fmt: skip
    where = []
    for column, value in (
        ("agent", agent), ("created_by", created_by), ("state", state.value if state else ""),
    ):  # fmt: skip
        if value:
            where.append(f"s.{column} = :{column}")
            params[column] = value
    rows = await store._read(
        f"WITH hits AS MATERIALIZED ({_HITS}) "
        f"SELECT {_S_COLUMNS}, -MIN(h.rank) AS score FROM hits h JOIN sessions s ON s.id = h.session_id"
        f"{' WHERE ' + ' AND '.join(where) if where else ''} GROUP BY s.id "
        "ORDER BY score DESC, s.updated_at DESC, s.id DESC LIMIT :limit OFFSET :offset",
        params,
    )
    if not rows:
        return []
    found = {row[0]: SessionMatch(record_from_row(row[:-1]), float(row[-1]), []) for row in rows}
    hits = await store._read(
        _MATCHES, {"q": params["q"], "ids": dumps(list(found)), "matches": max(matches, 0)}
    )
    for session_id, seq, role, created_at, rank, marked in hits:
        text, spans = unmark(marked)
        found[session_id].matches.append(
            MessageMatch(seq, Role(role), text, spans, float(created_at), -rank)
        )
    return list(found.values())
