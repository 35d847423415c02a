"""`search_sessions` of the PostgreSQL store: full-text search over the
`transcript_items.search` tsvector (schema: `migrations`, version 5) under
its GIN index, ranked by `ts_rank`, snippets by `ts_headline`.

A session's score is its best message's `ts_rank`. Two statements: the
page of sessions (filters, ranking, paging), then the best messages of
those sessions, whose snippets only are made (`ts_headline` parses the
text again, so it runs on those few messages).
"""

from __future__ import annotations

from typing import Any

from pilothouse.runtime.messages import Role
from pilothouse.runtime.store.base import MessageMatch, SessionMatch, SessionState
from pilothouse.runtime.store.codec import RECORD_COLUMNS, record_from_row
from pilothouse.runtime.store.textsearch import START, STOP, SearchQuery, tsquery, unmark

#: `ts_headline` options: one fragment of 12 to 30 words, the matches marked.
HEADLINE_OPTIONS = (
    f"StartSel={START}, StopSel={STOP}, MaxWords=30, MinWords=12, ShortWord=0, MaxFragments=1"
)

_S_COLUMNS = ", ".join(
    f"s.{c}::text" if c in ("always_approved_tools", "last_run_usage") else f"s.{c}"
    for c in RECORD_COLUMNS.split(", ")
)

_MATCHES = """
WITH q AS (SELECT to_tsquery('simple', $1) AS q), best AS (
    SELECT session_id, seq, rank FROM (
        SELECT i.session_id, i.seq, ts_rank(i.search, q.q) AS rank,
            row_number() OVER (
                PARTITION BY i.session_id ORDER BY ts_rank(i.search, q.q) DESC, i.seq
            ) AS n
        FROM transcript_items i, q
        WHERE i.session_id = ANY($2::text[]) AND i.search @@ q.q
    ) ranked WHERE n <= $3
), headlines AS (
    SELECT b.session_id, b.seq, b.rank, i.role, i.created_at, length(i.content) AS size,
        ts_headline('simple', i.content, q.q, $4) AS marked, i.content
    FROM best b JOIN transcript_items i ON i.session_id = b.session_id AND i.seq = b.seq, q
)
SELECT session_id, seq, role, created_at, rank, marked, size,
    strpos(content, replace(replace(marked, chr(2), ''), chr(3), '')) AS start
FROM headlines ORDER BY rank DESC, seq
"""


async def search_sessions(
    store: Any,
    query: SearchQuery,
    *,
    agent: str,
    created_by: str,
    state: SessionState | None,
    offset: int,
    limit: int,
    matches: int = 3,
) -> list[SessionMatch]:
    """`SessionStore.search_sessions` of `store` (a `PostgresSessionStore`)."""
    fetch = store._fetch
    text = tsquery(query)
    args: list[Any] = [text, max(limit, 0), max(offset, 0)]
    where = []
    for column, value in (
        ("agent", agent), ("created_by", created_by), ("state", state.value if state else ""),
    ):  # fmt: skip
        if value:
            args.append(value)
            where.append(f"s.{column} = ${len(args)}")
    rows = await fetch(
        "WITH q AS (SELECT to_tsquery('simple', $1) AS q), hits AS ("
        " SELECT i.session_id, ts_rank(i.search, q.q) AS rank"
        " FROM transcript_items i, q WHERE i.search @@ q.q)"
        f" SELECT {_S_COLUMNS}, MAX(h.rank) AS score FROM hits h JOIN sessions s ON s.id = h.session_id"
        f"{' WHERE ' + ' AND '.join(where) if where else ''} GROUP BY s.id"
        " ORDER BY score DESC, s.updated_at DESC, s.id DESC LIMIT $2 OFFSET $3",
        *args,
    )
    if not rows:
        return []
    found = {row[0]: SessionMatch(record_from_row(row), float(row[-1]), []) for row in rows}
    hits = await fetch(_MATCHES, text, list(found), max(matches, 0), HEADLINE_OPTIONS)
    for session_id, seq, role, created_at, rank, marked, size, start in hits:
        snippet, spans = unmark(marked)
        if start and start - 1 + len(snippet) < size:  # the passage is cut: say so
            snippet += "…"
        if start > 1:
            snippet, spans = "…" + snippet, [(s + 1, e + 1) for s, e in spans]
        found[session_id].matches.append(
            MessageMatch(seq, Role(role), snippet, spans, float(created_at), float(rank))
        )
    return list(found.values())
