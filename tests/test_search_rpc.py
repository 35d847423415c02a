"""SearchSessions over a real gRPC channel, on the runtime's embedded SQLite
store: sessions filled by a real run (the scripted model's answer) and by
ImportSession are found, ranked, filtered and paged; bad requests are
INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json

import grpc
import pytest

from pilothouse.rpc.errors import error_details
from pilothouse.testmodel import text_reply
from pilothouse.v1 import message_pb2, session_pb2, session_service_pb2 as sessions_pb


def session_file(agent: str, created_by: str, *lines: dict) -> bytes:
    meta = {"type": "meta", "agent": agent, "created_by": created_by, "created_at": 1.7e9}
    return b"".join(json.dumps(line).encode() + b"\n" for line in (meta, *lines))


def said(role: str, content: str, **fields) -> dict:
    return {"type": "message", "role": role, "content": content, **fields}


async def search(client, query: str, **fields) -> sessions_pb.SearchSessionsResponse:
    return await client.sessions.SearchSessions(
        sessions_pb.SearchSessionsRequest(query=query, **fields), timeout=10
    )


async def test_a_run_is_found_by_what_was_said(client, fake_model, make_agent) -> None:
    agent = await make_agent()
    session = await client.create_session(agent, "searcher")
    fake_model.responder.push(text_reply("Quokkas live on Rottnest Island and do not migrate."))
    await client.send_to(session.id, "Where do quokkas go in winter?")

    reply = await search(client, "quokkas", agent=agent)
    assert [r.session.id for r in reply.results] == [session.id]
    result = reply.results[0]
    assert result.session.agent == agent and result.score > 0
    assert {(m.message_id, m.role) for m in result.matches} == {
        ("0", message_pb2.ROLE_USER), ("1", message_pb2.ROLE_ASSISTANT),
    }  # fmt: skip
    for match in result.matches:
        assert [match.snippet[h.start : h.end].lower() for h in match.highlights] == ["quokkas"]
        assert match.create_time.seconds > 0
    answer = next(m for m in result.matches if m.role == message_pb2.ROLE_ASSISTANT)
    assert answer.snippet == "Quokkas live on Rottnest Island and do not migrate."
    assert not reply.next_page_token
    assert [r.session.id for r in (await search(client, '"rottnest island" migr*')).results] == [
        session.id
    ]
    assert (await search(client, "quokkas kangaroos", agent=agent)).results == []


async def test_results_are_ranked_filtered_and_paged(client, make_agent) -> None:
    agent = await make_agent()
    filler = " ".join(f"filler{i}" for i in range(60))
    files = {
        "often": session_file(agent, "ana", said("user", "wombat wombat wombat burrows"),
                              said("assistant", "Wombats dig burrows.")),
        "once": session_file(agent, "ana", said("user", f"{filler} wombat {filler}")),
        "bob": session_file(agent, "bob", said("user", "a wombat question from bob")),
        "tool": session_file(agent, "ana", said("user", "look it up"),
                             said("assistant", "", tool_calls=[
                                 {"id": "c1", "name": "lookup", "arguments": '{"q": "wombat"}'}]),
                             said("tool", "wombat facts", tool_call_id="c1", name="lookup")),
    }  # fmt: skip
    ids = {name: (await client.import_session(content)).id for name, content in files.items()}

    everyone = await search(client, "wombat", agent=agent)
    found = [r.session.id for r in everyone.results]
    assert found[0] == ids["often"] and set(found) == {ids["often"], ids["once"], ids["bob"]}
    assert ids["tool"] not in found  # tool calls and results are not searched
    scores = [r.score for r in everyone.results]
    assert scores == sorted(scores, reverse=True)

    ana = await search(client, "wombat", agent=agent, created_by="ana")
    assert [r.session.id for r in ana.results] == [ids["often"], ids["once"]]
    await client.close_session(ids["bob"])
    closed = await search(client, "wombat", agent=agent, state=session_pb2.SESSION_STATE_CLOSED)
    assert [r.session.id for r in closed.results] == [ids["bob"]]
    assert closed.results[0].session.state == session_pb2.SESSION_STATE_CLOSED

    pages, token = [], ""
    while True:
        page = await search(client, "wombat", agent=agent, page_size=1, page_token=token)
        pages.append([r.session.id for r in page.results])
        if not (token := page.next_page_token):
            break
    assert pages == [[i] for i in found]

    long = (await search(client, "wombat", agent=agent, created_by="ana")).results[1].matches[0]
    assert long.snippet.startswith("…") and long.snippet.endswith("…")
    assert [long.snippet[h.start : h.end] for h in long.highlights] == ["wombat"]


async def test_deleted_sessions_are_not_found(client, make_agent) -> None:
    agent = await make_agent()
    session = await client.import_session(session_file(agent, "x", said("user", "axolotl tanks")))
    assert len((await search(client, "axolotl", agent=agent)).results) == 1
    await client.delete_session(session.id)
    assert (await search(client, "axolotl", agent=agent)).results == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "  -- () "}, "query"),
        ({"query": "x" * 501}, "query"),
        ({"query": "ok", "page_size": -1}, "page_size"),
        ({"query": "ok", "page_token": "not-a-token"}, "page_token"),
        ({"query": "ok", "state": 99}, "state"),
    ],
)
async def test_bad_requests_are_invalid_argument(client, fields: dict, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.sessions.SearchSessions(sessions_pb.SearchSessionsRequest(**fields), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_details(caught.value)
    assert bad is not None and [v.field for v in bad.field_violations] == [field]


async def test_a_page_token_belongs_to_its_query(client, make_agent) -> None:
    agent = await make_agent()
    for _ in range(2):
        await client.import_session(session_file(agent, "x", said("user", "capybara pools")))
    first = await search(client, "capybara", agent=agent, page_size=1)
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(client, "pools", agent=agent, page_size=1, page_token=first.next_page_token)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    second = await search(client, "capybara", agent=agent, page_size=1,
                          page_token=first.next_page_token)  # fmt: skip
    assert len(second.results) == 1 and not second.next_page_token
    assert second.results[0].session.id != first.results[0].session.id
