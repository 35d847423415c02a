"""Page sizes and opaque page tokens for List methods.

A page token is URL-safe base64 of a small JSON object naming the list it
belongs to (`kind`), a fingerprint of the filters, and the position. A token
from another list or other filters is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from pilothouse.errors import InvalidArgumentError

MAX_PAGE_SIZE = 1000


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


def decode_token(token: str, kind: str, filters: dict[str, Any] | None = None) -> Any:
    """The position stored in `token`, or None for an empty token. Raises
    InvalidArgumentError (field `page_token`) for anything else."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgumentError.field("page_token", "not a page token of this server") from None
    if not isinstance(body, dict) or body.get("k") != kind or "p" not in body:
        raise InvalidArgumentError.field("page_token", f"not a page token of {kind}")
    if body.get("f") != _fingerprint(filters or {}):
        raise InvalidArgumentError.field("page_token", "the filters changed since the first page")
    return body["p"]
