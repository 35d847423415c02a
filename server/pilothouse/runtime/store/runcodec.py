"""Run records and stored events as rows of the SQL stores' `runs` and
`run_events` tables (schema: see `migrations`, version 4).

A `RunRecord` is one `runs` row in `RUN_COLUMNS` order; its JSON fields
(`agent_config`, `options`, `usage`, `state`) are compact ASCII JSON text,
parsed only when a record is read. Text a TEXT column cannot hold (NUL,
which PostgreSQL refuses, or a lone surrogate, which UTF-8 cannot encode)
in `content`, `sender` or `idempotency_key` (fields set once, when the run
is stored) goes into the `escaped_text` JSON object under its field name,
as the transcript codec does for messages; the column keeps "" (or, for
the idempotency key, which a unique index compares, its ASCII JSON
escape). An `error` (a diagnostic, set by checkpoints) is stored with
such characters written as backslash escapes. `last_sequence` is not
stored: every read computes it from the event log (`LAST_SEQUENCE`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pilothouse.runtime.store.base import (
    RunRecord,
    RunStatus,
    RunUpdate,
    StoredEvent,
)
from pilothouse.runtime.store.codec import decode_usage, encode_usage, text_safe

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads

#: The stored columns of a run record, in `run_params` order.
RUN_COLUMNS = (
    "id, session_id, agent, content, created_at, sender, agent_version, agent_config, "
    "options, idempotency_key, status, owner, attempt, started_at, ended_at, stop_reason, "
    "error, usage, iterations, state, escaped_text"
)
#: How many columns `RUN_COLUMNS` names.
RUN_COLUMN_COUNT = RUN_COLUMNS.count(",") + 1
#: The JSON columns of `runs` (PostgreSQL reads them back `::text`).
RUN_JSON_COLUMNS = ("agent_config", "options", "usage", "state", "escaped_text")
#: `last_sequence` of the run in the row aliased `runs` (a scalar subquery).
LAST_SEQUENCE = (
    "(SELECT COALESCE(MAX(e.sequence), 0) FROM run_events e WHERE e.run_id = runs.id)"
)
_ESCAPED = ("content", "sender", "idempotency_key")
_STATUSES = {status.value: status for status in RunStatus}


def dumps(value: Any) -> str:
    """Compact ASCII JSON (any Python string survives: surrogates escaped)."""
    return _dumps(value)


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates as backslash escapes (the same
    text when a TEXT column holds it)."""
    if text_safe(text):
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def key_column(idempotency_key: str) -> str:
    """The stored form of an idempotency key (see the module docstring)."""
    return idempotency_key if text_safe(idempotency_key) else _dumps(idempotency_key)


def run_params(record: RunRecord) -> tuple[Any, ...]:
    """`record` as parameters in `RUN_COLUMNS` order."""
    escaped: dict[str, str] = {}
    text = []
    for name in _ESCAPED:
        value = getattr(record, name)
        if value and not text_safe(value):
            escaped[name] = value
            value = _dumps(value) if name == "idempotency_key" else ""
        text.append(value)
    content, sender, key = text
    return (
        record.id,
        record.session_id,
        record.agent,
        content,
        record.created_at,
        sender,
        record.agent_version,
        _dumps(record.agent_config),
        _dumps(record.options),
        key,
        record.status.value,
        record.owner,
        record.attempt,
        record.started_at,
        record.ended_at,
        record.stop_reason,
        storable(record.error),
        encode_usage(record.usage),
        record.iterations,
        _dumps(record.state),
        _dumps(escaped) if escaped else None,
    )


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """A `RunRecord` from a row of `RUN_COLUMNS` followed by `last_sequence`
    (a tuple or an asyncpg Record; JSON columns as text)."""
    escaped = _loads(row[20]) if row[20] is not None else {}
    return RunRecord(
        id=row[0],
        session_id=row[1],
        agent=row[2],
        content=escaped.get("content", row[3]),
        created_at=float(row[4]),
        sender=escaped.get("sender", row[5]),
        agent_version=int(row[6]),
        agent_config=_loads(row[7]),
        options=_loads(row[8]),
        idempotency_key=escaped.get("idempotency_key", row[9]),
        status=_STATUSES[row[10]],
        owner=row[11],
        attempt=int(row[12]),
        started_at=float(row[13]),
        ended_at=float(row[14]),
        stop_reason=row[15],
        error=row[16],
        usage=decode_usage(row[17]),
        iterations=int(row[18]),
        state=_loads(row[19]),
        last_sequence=int(row[21]),
    )


def update_params(update: RunUpdate) -> tuple[Any, ...]:
    """A `RunUpdate` as (status, iterations, usage, state, stop_reason,
    error, ended_at), None where the field is left as it is; see
    `update_assignments`."""
    return (
        update.status.value if update.status is not None else None,
        update.iterations,
        encode_usage(update.usage) if update.usage is not None else None,
        _dumps(update.state) if update.state is not None else None,
        update.stop_reason,
        storable(update.error) if update.error is not None else None,
        update.ended_at,
    )


def update_assignments(placeholders: Sequence[str], json_cast: str = "") -> str:
    """The SET list applying `update_params` given as `placeholders` (7 of
    them, in that order); `json_cast` (PostgreSQL: "::json") is appended to
    the JSON parameters."""
    p = placeholders
    return (
        f"status = COALESCE({p[0]}, status), "
        f"iterations = COALESCE({p[1]}, iterations), "
        f"usage = COALESCE({p[2]}{json_cast}, usage), "
        f"state = COALESCE({p[3]}{json_cast}, state), "
        f"stop_reason = COALESCE({p[4]}, stop_reason), "
        f"error = COALESCE({p[5]}, error), "
        f"ended_at = COALESCE({p[6]}, ended_at)"
    )


def has_update(update: RunUpdate) -> bool:
    """Whether `update` changes anything."""
    return any(
        value is not None
        for value in (
            update.status, update.iterations, update.usage, update.state,
            update.stop_reason, update.error, update.ended_at,
        )
    )  # fmt: skip


def event_params(event: StoredEvent) -> tuple[str, int, float, str, str]:
    """An event as (run_id, sequence, time, kind, payload); a payload a
    TEXT column cannot hold is re-encoded as ASCII JSON (same value)."""
    payload = event.payload
    if not text_safe(payload):
        payload = _dumps(_loads(payload))
    return event.run_id, event.sequence, event.time, event.kind, payload


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A `StoredEvent` from a (run_id, sequence, time, kind, payload) row."""
    return StoredEvent(row[0], int(row[1]), float(row[2]), row[3], row[4])
