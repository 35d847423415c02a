"""Session search, the store part, on every store (memory: a scan; SQLite:
FTS5 with BM25; PostgreSQL: tsvector, GIN, ts_rank): what is searched, the
query language, ranking, snippets, filters and pages, and that the index
follows deletes, imports and the migration of older databases. The RPC is
tested in `test_search_rpc`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.messages import Message, Role, ToolCall
from pilothouse.runtime.store.base import CompactMarker, SessionMatch, SessionState, SessionStore
from pilothouse.runtime.store.codec import ITEM_COLUMNS, encode_item
from pilothouse.runtime.store.migrations import MIGRATIONS
from pilothouse.runtime.store.postgres import PostgresSessionStore
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from pilothouse.runtime.store.textsearch import (
    Term,
    find,
    fts5_query,
    parse_query,
    snippet,
    tsquery,
    unmark,
)
from tests.pg import PgServer
from tests.stores import Backend, assistant, record, run, user

pytest_plugins = ["tests.store_fixtures"]


async def search(store: SessionStore, text: str, **args) -> list[SessionMatch]:
    values = {"agent": "", "created_by": "", "state": None, "offset": 0, "limit": 10}
    values.update(args)
    return await store.search_sessions(parse_query(text), **values)


async def ids(store: SessionStore, text: str, **args) -> list[str]:
    return [m.session.id for m in await search(store, text, **args)]


# --- the query language -----------------------------------------------------------


def test_queries_parse_into_words_phrases_and_prefixes() -> None:
    query = parse_query('Deploy  "blue green"* rollback* -- x.y "" ')
    assert query.terms == (
        Term(("deploy",)), Term(("blue", "green"), True), Term(("rollback",), True),
        Term(("x",)), Term(("y",)),
    )  # fmt: skip
    assert fts5_query(query) == '"deploy" "blue green"* "rollback"* "x" "y"'
    assert tsquery(query) == "('deploy') & ('blue' <-> 'green':*) & ('rollback':*) & ('x') & ('y')"
    assert parse_query("a a A").terms == (Term(("a",)),)  # repeated words count once
    assert parse_query("日本語 café").terms == (Term(("日本語",)), Term(("café",)))
    for bad in ("", "   ", '"" -- ** ()', "_"):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_query(bad)
        assert caught.value.field_violations[0][0] == "query"
    with pytest.raises(InvalidArgumentError):
        parse_query(" ".join(f"w{i}" for i in range(33)))


def test_the_scan_finds_spans_and_cuts_snippets() -> None:
    text = "Deploy the blue-green build, then deploy again."
    assert find(parse_query("deploy"), text) == [(0, 6), (34, 40)]
    assert find(parse_query('"blue green" build'), text) == [(11, 15), (16, 21), (22, 27)]
    assert find(parse_query("deploy missing"), text) is None
    assert find(parse_query("bui*"), text) == [(22, 27)]
    assert find(parse_query("bui"), text) is None  # whole words
    long = "x " * 200 + "needle " + "y " * 200
    spans = find(parse_query("needle"), long)
    assert spans is not None
    cut, inside = snippet(long, spans, width=40)
    assert cut.startswith("…") and cut.endswith("…") and len(cut) == 42
    assert [cut[s:e] for s, e in inside] == ["needle"]
    assert unmark("a \x02b\x03 c \x02d\x03") == ("a b c d", [(2, 3), (6, 7)])


# --- what is found ------------------------------------------------------------------


async def test_only_user_and_assistant_text_is_searched(store: SessionStore) -> None:
    await store.create(record("s1"))
    call = ToolCall("c1", "lookup", '{"query": "zebra"}')
    await run(store, "s1", "r1", [
        user("Where do giraffes live?", 10.0),
        Message(Role.ASSISTANT, "", reasoning_content="think about okapi", tool_calls=[call],
                created_at=11.0),
        Message(Role.TOOL, "savanna lion", tool_call_id="c1", name="lookup", created_at=12.0),
        Message(Role.USER, "remembered pangolin", auto_injected=True, created_at=13.0),
        Message(Role.SYSTEM, "be brief about meerkats", created_at=14.0),
        assistant("Giraffes live in the savanna.", 15.0),
    ])  # fmt: skip
    assert await ids(store, "giraffes") == ["s1"]
    assert await ids(store, "savanna") == ["s1"]  # the assistant said it
    for hidden in ("zebra", "lookup", "okapi", "lion", "pangolin", "meerkats"):
        assert await ids(store, hidden) == [], hidden
    found = (await search(store, "savanna"))[0]
    assert [(m.position, m.role) for m in found.matches] == [(5, Role.ASSISTANT)]


async def test_every_word_is_needed_phrases_in_a_row_prefixes_and_any_case(
    store: SessionStore,
) -> None:
    await store.create(record("a"))
    await store.create(record("b"))
    await run(store, "a", "r1", [user("Roll out the Blue Green deployment today", 10.0)])
    await run(store, "b", "r2", [user("green tea and blue cheese", 20.0)])
    assert sorted(await ids(store, "blue green")) == ["a", "b"]
    assert await ids(store, '"blue green"') == ["a"]
    assert await ids(store, '"green blue"') == []
    assert await ids(store, "BLUE deployment") == ["a"]
    assert await ids(store, "deploy") == []  # whole words
    assert await ids(store, "deploy*") == ["a"]
    assert await ids(store, '"blue gre"*') == ["a"]
    assert await ids(store, "blue missing") == []


async def test_better_matches_rank_first_with_their_best_messages(store: SessionStore) -> None:
    await store.create(record("once", updated_at=300.0))
    await store.create(record("often", updated_at=100.0))
    filler = " ".join(f"word{i}" for i in range(80))
    await run(store, "once", "r1", [user(f"{filler} kubernetes {filler}", 10.0)], at=300.0)
    await run(store, "often", "r2", [
        user("kubernetes kubernetes kubernetes", 20.0),
        assistant("Nothing relevant here.", 21.0),
        assistant("Try kubernetes with a long explanation " + filler, 22.0),
        user("kubernetes again", 23.0),
    ], at=100.0)  # fmt: skip
    found = await search(store, "kubernetes")
    assert [m.session.id for m in found] == ["often", "once"]
    assert found[0].score > found[1].score
    best = found[0].matches
    assert len(best) == 3 and best[0].position == 0 and {m.position for m in best} <= {0, 2, 3}
    assert [m.score for m in best] == sorted((m.score for m in best), reverse=True)
    assert found[0].session == await store.get("often")
    for match in best:
        assert match.highlights, match
        assert all(match.snippet[s:e].lower() == "kubernetes" for s, e in match.highlights)
    one = (await search(store, "kubernetes", matches=1))[0].matches
    assert [m.position for m in one] == [0]
    # The long message's snippet is a passage around the match.
    long = found[1].matches[0]
    assert long.created_at == 10.0 and long.role is Role.USER
    assert len(long.snippet) < 400 and long.snippet.startswith("…") and long.snippet.endswith("…")
    assert [long.snippet[s:e] for s, e in long.highlights] == ["kubernetes"]


async def test_filters_and_pages_like_list(store: SessionStore) -> None:
    for i, (agent, who, state) in enumerate([
        ("x", "u1", SessionState.OPEN), ("x", "u2", SessionState.OPEN),
        ("y", "u1", SessionState.OPEN), ("x", "u1", SessionState.CLOSED),
    ]):  # fmt: skip
        await store.create(record(f"s{i}", agent=agent, created_by=who, at=float(i)))
        await run(store, f"s{i}", f"r{i}", [user(f"the same question {i}", 10.0)], at=100.0 + i)
        if state is SessionState.CLOSED:
            await store.set_state(f"s{i}", state, 100.0 + i)
    # Equal scores: most recently updated first, as `list`.
    assert await ids(store, "question") == ["s3", "s2", "s1", "s0"]
    assert await ids(store, "question", agent="x") == ["s3", "s1", "s0"]
    assert await ids(store, "question", created_by="u1") == ["s3", "s2", "s0"]
    assert await ids(store, "question", agent="x", state=SessionState.OPEN) == ["s1", "s0"]
    assert await ids(store, "question", state=SessionState.CLOSED) == ["s3"]
    assert await ids(store, "question", agent="nobody") == []
    assert await ids(store, "question", offset=1, limit=2) == ["s2", "s1"]
    assert await ids(store, "question", offset=3, limit=2) == ["s0"]
    assert await ids(store, "question", offset=4) == [] and await ids(store, "question", limit=0) == []


async def test_the_index_follows_the_transcript(store: SessionStore) -> None:
    """Messages before a compaction stay findable (they are in the
    transcript), at their transcript position; imported sessions are found;
    deleted ones are not."""
    await store.create(record("s1"))
    await run(store, "s1", "r1", [user("first about otters", 10.0), assistant("ok", 11.0)])
    await store.compact("s1", "They talked about otters.", 20.0)  # a summary is not searched
    await run(store, "s1", "r2", [user("then about beavers", 30.0)])
    found = (await search(store, "otters"))[0]
    assert [(m.position, m.snippet) for m in found.matches] == [(0, "first about otters")]
    assert (await search(store, "beavers"))[0].matches[0].position == 3
    await store.import_session(record("imp"), [
        user("imported walrus", 1.0), CompactMarker("walrus summary", 2.0),
        assistant("walrus facts", 3.0),
    ])  # fmt: skip
    assert [(m.position, m.role) for m in (await search(store, "walrus"))[0].matches] == [
        (2, Role.ASSISTANT), (0, Role.USER),
    ] or [(m.position, m.role) for m in (await search(store, "walrus"))[0].matches] == [
        (0, Role.USER), (2, Role.ASSISTANT),
    ]  # fmt: skip  (two equally good matches: either first)
    await store.delete("s1")
    assert await ids(store, "otters") == [] and await ids(store, "walrus") == ["imp"]
    await store.create(record("s1"))  # the id again, with an empty history
    assert await ids(store, "beavers") == []


async def test_text_with_any_characters_is_searched_or_skipped_cleanly(store: SessionStore) -> None:
    await store.create(record("s1"))
    await run(store, "s1", "r1", [
        user("日本語のテキスト and ascii", 1.0), user("ünïcödé wörds", 2.0),
        user('quotes "and" * stars (parens) AND OR NOT NEAR', 3.0),
    ])  # fmt: skip
    assert await ids(store, "ascii") == ["s1"]
    assert await ids(store, "wörds") == ["s1"]
    assert await ids(store, '"and" OR NOT NEAR*') == ["s1"]  # operators are plain words
    assert await ids(store, "stars parens") == ["s1"]


# --- migration --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_4_database_is_indexed_by_the_migration(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    schema = "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
    if kind == "sqlite":
        path = tmp_path / "v4.db"
        with sqlite3.connect(path) as conn:
            conn.execute(schema)
            for m in MIGRATIONS[:4]:
                for statement in m.sqlite:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 1.0)", (m.version, m.name))
        backend = Backend("sqlite", lambda: SqliteSessionStore(path), path=path)
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        dsn = await server.new_database()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(schema)
            for m in MIGRATIONS[:4]:
                for statement in m.postgres:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, 1.0)", m.version, m.name)
        finally:
            await conn.close()
        backend = Backend("postgres", lambda: PostgresSessionStore(dsn, max_size=2), dsn=dsn)
    await backend.sql(
        "INSERT INTO sessions (id, agent, created_by, created_at, updated_at, next_seq)"
        " VALUES ('old', 'assistant', 'me', 1.0, 5.0, 3)"
    )
    columns = ", ".join(ITEM_COLUMNS)
    for seq, message in enumerate([
        user("an old question about narwhals", 1.0),
        Message(Role.TOOL, "narwhal tusk data", tool_call_id="c", name="t", created_at=2.0),
        assistant("narwhals have tusks", 3.0),
    ]):  # fmt: skip
        row = ("old", seq, *encode_item(message))
        await backend.sql(f"INSERT INTO transcript_items (session_id, seq, {columns}) "
                          f"VALUES ({', '.join('?' * len(row))})", *row)  # fmt: skip
    store = await backend.open()
    try:
        found = await search(store, "narwhals")
        assert [m.session.id for m in found] == ["old"]
        assert sorted(m.position for m in found[0].matches) == [0, 2]
        assert await ids(store, "tusk") == []  # the tool result is not indexed
        await run(store, "old", "r1", [user("and belugas?", 10.0)])
        assert await ids(store, "belugas") == ["old"]
    finally:
        await store.close()
