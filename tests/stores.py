"""Helpers of the store contract suites (`test_session_stores`,
`test_run_store`); their fixtures are in `tests.store_fixtures`."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.store.base import (
    Checkpoint,
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionStore,
    StoredEvent,
)
from pilothouse.runtime.store.codec import ITEM_COLUMNS, encode_item


@dataclasses.dataclass
class Backend:
    """One kind of store; `new()` makes another store object on the same
    storage (a restarted server, or a second replica)."""

    kind: str
    new: Callable[[], SessionStore]
    dsn: str = ""
    path: Path | None = None
    opened: list[SessionStore] = dataclasses.field(default_factory=list)

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    async def open(self) -> SessionStore:
        store = self.new()
        await store.open()
        self.opened.append(store)
        return store

    async def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on the storage behind the store's back
        (`?` placeholders; `$n` on PostgreSQL)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:  # type: ignore[arg-type]
                return conn.execute(statement, params).fetchall()
        conn = await asyncpg.connect(self.dsn)
        try:
            numbered = statement
            for i in range(statement.count("?")):
                numbered = numbered.replace("?", f"${i + 1}", 1)
            return [tuple(r) for r in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()


# --- records and messages -------------------------------------------------------


def record(session_id: str, *, agent: str = "assistant", created_by: str = "me", at: float = 100.0,
           **fields) -> SessionRecord:  # fmt: skip
    return SessionRecord(session_id, agent, created_by, at, fields.pop("updated_at", at), **fields)


def user(text: str, at: float = 1.0, **fields) -> Message:
    return Message(Role.USER, text, created_at=at, **fields)


def assistant(text: str, at: float = 1.0, **fields) -> Message:
    return Message(Role.ASSISTANT, text, created_at=at, **fields)


def tool_round(call_id: str, at: float = 1.0) -> list[Message]:
    """An assistant tool call and its result."""
    return [
        assistant("", at, tool_calls=[ToolCall(call_id, "calculate", '{"expression":"1+1"}')]),
        Message(Role.TOOL, "2", tool_call_id=call_id, name="calculate", created_at=at),
    ]


def conversation(n: int, start: float = 10.0) -> list[Message]:
    return [(user if i % 2 == 0 else assistant)(f"message {i}", start + i) for i in range(n)]


def run_record(run_id: str, session_id: str = "s1", *, at: float = 100.0, **fields) -> RunRecord:
    """A run record (QUEUED unless said otherwise)."""
    fields.setdefault("agent", "assistant")
    fields.setdefault("content", f"question of {run_id}")
    return RunRecord(run_id, session_id, created_at=at, **fields)


def event(run_id: str, sequence: int, kind: str = "text_delta", at: float = 1.0) -> StoredEvent:
    return StoredEvent(run_id, sequence, at, kind, f'{{"sequence":{sequence}}}')


def final(messages: list[Message] | None = None, *, at: float = 200.0, **fields) -> Checkpoint:
    """The final checkpoint of a finished run: `messages`, stop reason
    text_response, usage (10, 5, 15), 1.5 s of uptime; `fields` override
    (`stop_reason`, `usage` go to the run update)."""
    update = RunUpdate(
        status=RunStatus.FINISHED,
        stop_reason=fields.pop("stop_reason", "text_response"),
        usage=fields.pop("usage", Usage(10, 5, 15)),
        ended_at=at,
    )
    fields.setdefault("uptime_s", 1.5)
    return Checkpoint(now=at, messages=list(messages or []), run=update, final=True, **fields)


async def begin(store: SessionStore, session_id: str, run_id: str, *, now: float = 150.0,
                lease_s: float = 60.0, **fields) -> SessionRecord:  # fmt: skip
    """Start a new run `run_id` (its record made by `run_record`)."""
    new = run_record(run_id, session_id, at=now, **fields.pop("run", {}))
    return await store.begin_run(session_id, run_id, lease_s=lease_s, now=now, new_run=new, **fields)


async def run(store: SessionStore, session_id: str, run_id: str, messages: list[Message],
              *, now: float = 150.0, **fields) -> SessionRecord:  # fmt: skip
    """A whole run: `begin`, then one final checkpoint of `messages`
    (`fields` as for `final`)."""
    await begin(store, session_id, run_id, now=now)
    return await store.checkpoint(session_id, run_id, final(messages, **fields))


async def plant_transcript_row(backend: Backend, session_id: str, seq: int) -> None:
    """Insert a transcript row directly into the database (not visible in the
    history: `next_seq` does not move)."""
    row = (session_id, seq, *encode_item(user("planted")))
    columns = ", ".join(ITEM_COLUMNS)
    await backend.sql(
        f"INSERT INTO transcript_items (session_id, seq, {columns}) "
        f"VALUES ({', '.join('?' * len(row))})",
        *row,
    )
