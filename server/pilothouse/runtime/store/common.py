"""What the session stores share beyond the interface in `base`: the
model-visible history of a transcript, and SESSION_EXISTS. (The other
errors they raise are `pilothouse.errors`' factories: `session_not_found`,
`run_active`, `lease_lost`, ...)"""

from __future__ import annotations

from collections.abc import Sequence

from pilothouse.errors import AlreadyExistsError
from pilothouse.runtime.messages import Message
from pilothouse.runtime.store.base import CompactMarker, TranscriptItem


def visible_history(items: Sequence[TranscriptItem]) -> list[Message]:
    """The model-visible history of a transcript: after the last compact
    marker, with its summary as the first (user) message."""
    start = 0
    summary: str | None = None
    for index, item in enumerate(items):
        if isinstance(item, CompactMarker):
            start, summary = index + 1, item.summary
    history = [m for m in items[start:] if isinstance(m, Message)]
    if summary is not None:
        marker = items[start - 1]
        history.insert(0, Message.user(summary))
        history[0].created_at = marker.created_at
    return history


def session_exists(session_id: str) -> AlreadyExistsError:
    """SESSION_EXISTS: `create` or `import_session` with a taken id."""
    return AlreadyExistsError(
        f"session {session_id!r} already exists",
        reason="SESSION_EXISTS",
        metadata={"session_id": session_id},
    )
