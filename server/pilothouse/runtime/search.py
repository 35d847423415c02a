"""Finding sessions by what was said in them (SearchSessions): the query
checked, the page and its token, the search itself left to the store
(`SessionStore.search_sessions`; the query language: `store.textsearch`)."""

from __future__ import annotations

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.store.base import SessionMatch, SessionState, SessionStore
from pilothouse.runtime.store.textsearch import parse_query

#: Longest query, in characters.
MAX_QUERY_CHARS = 500
#: Page sizes: 0 means `DEFAULT_PAGE_SIZE`, larger than `MAX_PAGE_SIZE` is clamped.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: Messages shown per session found.
MATCHES_PER_SESSION = 3


async def search_sessions(
    store: SessionStore,
    query: str,
    *,
    agent: str = "",
    created_by: str = "",
    state: SessionState | None = None,
    size: int = 0,
    token: str = "",
) -> tuple[list[SessionMatch], str]:
    """A page of the sessions matching `query` (best first) and the token
    of the next page ("" on the last). InvalidArgumentError (field `query`)
    for an empty, wordless or too long query, (`page_size`) for a negative
    size, (`page_token`) for a token of another search."""
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgumentError.field("query", f"is longer than {MAX_QUERY_CHARS} characters")
    parsed = parse_query(query)
    limit = page_size(size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    filters = {
        "query": query, "agent": agent, "created_by": created_by,
        "state": state.value if state else "",
    }  # fmt: skip
    offset = decode_token(token, "search", filters) or 0
    if type(offset) is not int or offset < 0:
        raise InvalidArgumentError.field("page_token", "not a page token of this search")
    found = await store.search_sessions(
        parsed, agent=agent, created_by=created_by, state=state, offset=offset,
        limit=limit + 1, matches=MATCHES_PER_SESSION,
    )  # fmt: skip
    more = len(found) > limit
    return found[:limit], encode_token("search", offset + limit, filters) if more else ""
