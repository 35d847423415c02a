"""Full-text search over session messages, the part every store shares: the
query language, its translation to SQLite FTS5 and PostgreSQL tsquery, and
the scan the memory store does.

A query is words, all of which a message must contain: whole words, case
insensitive ("Deploy" finds "deploy", not "deployed"); `"two words"` in
double quotes must appear in a row; a trailing `*` makes the word (or the
phrase's last word) a prefix (`deploy*` finds "deployed"). Anything else
(punctuation, operators) only separates words. A word is a run of letters
and digits, as the stores' tokenizers (SQLite `unicode61`, PostgreSQL's
`simple` configuration) cut text; accents are significant.

Only user and assistant messages are searched, their `content` (tool
calls, tool results, reasoning and messages the runtime injected are not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.messages import Message, Role

#: Roles whose messages are searched.
SEARCHED_ROLES = (Role.USER, Role.ASSISTANT)
#: Most terms (words and phrases) a query may have.
MAX_TERMS = 32
#: Marks around a matched word in the snippets the SQL stores make
#: (control characters, taken out by `unmark`).
START, STOP = "\x02", "\x03"

_WORD = re.compile(r"[^\W_]+")
_TERM = re.compile(r'"([^"]*)"(\*?)|([^\s"]+)')


@dataclass(frozen=True, slots=True)
class Term:
    """Words that must appear in a row (one word, or a phrase); with
    `prefix`, the last one is a prefix."""

    words: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed query: every term must match."""

    terms: tuple[Term, ...]
    text: str


def words(text: str) -> list[str]:
    """The words of `text`, in lower case."""
    return _WORD.findall(text.lower())


def parse_query(text: str) -> SearchQuery:
    """Parse a query (see the module docstring). InvalidArgumentError
    (field `query`) when it has no word or more than `MAX_TERMS` terms."""
    terms: list[Term] = []
    for phrase, phrase_star, bare in _TERM.findall(text):
        if bare:
            prefix = bare.endswith("*")
            for i, word in enumerate(found := words(bare)):
                terms.append(Term((word,), prefix and i == len(found) - 1))
        elif found := words(phrase):
            terms.append(Term(tuple(found), bool(phrase_star)))
    if not terms:
        raise InvalidArgumentError.field("query", "has no word to search for")
    if len(terms) > MAX_TERMS:
        raise InvalidArgumentError.field("query", f"has more than {MAX_TERMS} words and phrases")
    return SearchQuery(tuple(dict.fromkeys(terms)), text)


def fts5_query(query: SearchQuery) -> str:
    """The query in FTS5 syntax: each term a quoted string (words are
    letters and digits only, so nothing needs escaping), `*` for a prefix,
    all of them required."""
    return " ".join(f'"{" ".join(t.words)}"' + ("*" if t.prefix else "") for t in query.terms)


def tsquery(query: SearchQuery) -> str:
    """The query as PostgreSQL `to_tsquery('simple', ...)` text: `<->`
    between a phrase's words, `:*` for a prefix, `&` between terms."""
    parts = []
    for term in query.terms:
        quoted = [f"'{w}'" for w in term.words]
        if term.prefix:
            quoted[-1] += ":*"
        parts.append(" <-> ".join(quoted) if len(quoted) > 1 else quoted[0])
    return " & ".join(f"({p})" for p in parts)


def searchable(message: Message) -> bool:
    """Whether search looks at `message`."""
    return message.role in SEARCHED_ROLES and bool(message.content) and not message.auto_injected


# --- the scan of the memory store ------------------------------------------------


def find(query: SearchQuery, text: str) -> list[tuple[int, int]] | None:
    """The (start, end) spans of `text` (code points) that the query's
    terms match, in order; None unless every term matches."""
    tokens = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    spans: set[tuple[int, int]] = set()
    for term in query.terms:
        n = len(term.words)
        found = False
        for i in range(len(tokens) - n + 1):
            window = tokens[i : i + n]
            head_ok = all(window[k][0] == term.words[k] for k in range(n - 1))
            last, want = window[-1][0], term.words[-1]
            if head_ok and (last.startswith(want) if term.prefix else last == want):
                spans.update((t[1], t[2]) for t in window)
                found = True
        if not found:
            return None
    return sorted(spans)


def scan(query: SearchQuery, message: Message) -> tuple[float, str, list[tuple[int, int]]] | None:
    """(score, snippet, highlights) of a message the query matches, else
    None: the memory store's search. The score is the matched words over
    the square root of the message's length in words."""
    if not searchable(message):
        return None
    spans = find(query, message.content)
    if spans is None:
        return None
    score = len(spans) / max(len(words(message.content)), 1) ** 0.5
    return (score, *snippet(message.content, spans))


def snippet(text: str, spans: list[tuple[int, int]], *, width: int = 160) -> tuple[str, list[tuple[int, int]]]:
    """A passage of about `width` code points of `text` around its first
    span, with "…" where it was cut, and the spans inside it, shifted."""
    if len(text) <= width:
        return text, spans
    first = spans[0][0] if spans else 0
    start = max(0, min(first - width // 4, len(text) - width))
    end = start + width
    head = "…" if start > 0 else ""
    tail = "…" if end < len(text) else ""
    shift = len(head) - start
    inside = [(s + shift, e + shift) for s, e in spans if s >= start and e <= end]
    return head + text[start:end] + tail, inside


def unmark(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """A snippet with `START`/`STOP` marks as (text, spans of the marked
    parts, in code points)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    length, opened = 0, -1
    for part in re.split(f"([{START}{STOP}])", marked):
        if part == START:
            opened = length
        elif part == STOP:
            if opened >= 0 and length > opened:
                spans.append((opened, length))
            opened = -1
        elif part:
            out.append(part)
            length += len(part)
    return "".join(out), spans
