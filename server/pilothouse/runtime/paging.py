"""Page sizes and opaque page tokens for List methods.

A page token is URL-safe base64 of a small JSON object naming the list it
belongs to (`kind`), a fingerprint of the filters, and the position. Tokens
are not signed (every replica must read every other's, with no key to
share), so a token is checked field by field before its position is used:
a token that is too long, not base64 JSON, from another list or other
filters, or whose position has the wrong type or is out of range is
INVALID_ARGUMENT with ErrorInfo reason INVALID_PAGE_TOKEN.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from pilothouse.errors import InvalidArgumentError

MAX_PAGE_SIZE = 1000
#: Longer tokens were not made here (ours are under 200 characters).
MAX_TOKEN_CHARS = 1024
#: Largest offset a token may hold.
MAX_OFFSET = 2**31 - 1
#: Longest key position (the last name of a page), characters.
MAX_KEY_CHARS = 256
#: What each list's position is: an offset (int) or the last key seen (str).
#: A list not named here may use either (its caller checks the value).
POSITION_TYPES: dict[str, type] = {"agents": str, "runs": str, "sessions": int, "messages": int}
REASON = "INVALID_PAGE_TOKEN"


def page_size(value: int, *, default: int, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 → `default`; above `maximum` → `maximum`; negative → INVALID_ARGUMENT."""
    if value < 0:
        raise InvalidArgumentError.field("page_size", "must not be negative")
    if value == 0:
        return default
    return min(value, maximum)


def _fingerprint(filters: dict[str, Any]) -> str:
    raw = json.dumps(filters, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(kind: str, position: Any, filters: dict[str, Any] | None = None) -> str:
    body = {"k": kind, "p": position, "f": _fingerprint(filters or {})}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad(problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"page_token: {problem}", reason=REASON, field_violations=[("page_token", problem)]
    )


def _position(body: dict[str, Any], kind: str) -> Any:
    position = body["p"]
    wanted = POSITION_TYPES.get(kind)
    if wanted is None:
        wanted = str if isinstance(position, str) else int
    if wanted is int:
        if isinstance(position, bool) or not isinstance(position, int):
            raise _bad("not a page token of this server (bad position)")
        if not 0 <= position <= MAX_OFFSET:
            raise _bad("not a page token of this server (position out of range)")
    elif not isinstance(position, str) or len(position) > MAX_KEY_CHARS:
        raise _bad("not a page token of this server (bad position)")
    return position


def decode_token(token: str, kind: str, filters: dict[str, Any] | None = None) -> Any:
    """The position stored in `token` (an int offset, or for `agents` the
    last name), or None for an empty token. Raises InvalidArgumentError
    (reason INVALID_PAGE_TOKEN, field `page_token`) for anything else."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise _bad("not a page token of this server (too long)")
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("not a page token of this server") from None
    if not isinstance(body, dict) or body.get("k") != kind or "p" not in body:
        raise _bad(f"not a page token of {kind}")
    if body.get("f") != _fingerprint(filters or {}):
        raise _bad("the filters changed since the first page")
    return _position(body, kind)
