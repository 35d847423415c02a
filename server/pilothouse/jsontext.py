"""JSON text from outside (tool arguments, session files, page tokens)
parsed with a bound on nesting, shared by the runtime and the reference
ToolExecutor.

`json.loads` recurses once per level and raises RecursionError (not a
ValueError) somewhere past a thousand levels, and whatever walks the value
afterwards (validation, encoding) recurses again. `loads` refuses anything
nested deeper than MAX_DEPTH with `JsonTooDeep`, a ValueError, so callers
that already turn bad JSON into a clear error handle this one too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

import orjson

#: Deepest nesting of arrays and objects accepted (no real document comes
#: close; a thousand levels break the parser).
MAX_DEPTH = 100


_NOT_PARSED = object()


class JsonTooDeep(ValueError):
    """The document nests arrays/objects deeper than allowed."""


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, exact_integers: bool = True) -> Any:
    """`json.loads(text)`; raises `json.JSONDecodeError` for bad JSON and
    `JsonTooDeep` (both ValueError) for nesting deeper than `max_depth`.

    With `exact_integers` False, parsed with orjson in about a third of the
    time, at one cost: an integer past 64 bits comes back as a float. That
    suits the providers' stream chunks, whose numbers are counts and
    timestamps (tool arguments travel inside them as strings). What orjson
    refuses and the json module accepts (NaN, Infinity, lone surrogates)
    is parsed by the json module either way."""
    value: Any = _NOT_PARSED
    if not exact_integers:
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(text)
    if value is _NOT_PARSED:
        try:
            value = json.loads(text)
        except RecursionError:
            raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # Nesting never exceeds the number of opening brackets (those inside
    # strings included), counted in C: most documents, every streamed
    # model chunk among them, are cleared without walking the value.
    if _openings(text) > max_depth and depth(value, max_depth) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def _openings(text: str | bytes) -> int:
    if isinstance(text, str):
        return text.count("{") + text.count("[")
    return text.count(b"{") + text.count(b"[")


def depth(value: Any, stop: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in `value` (a scalar is 0), counted
    without recursion; stops counting past `stop`."""
    deepest = 0
    children: Iterable[Any]
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > stop:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
