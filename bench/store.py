"""Scenario 5, session stores, in the bench process: the cost of storing one
run (`begin_run` + `finish_run` with the four messages of a tool-call turn,
as the runtime does per run) and the time to load a 10,000-message session
(`load_history`), for every store that exists in the tree: memory, SQLite
(a file in the bench's work directory, WAL) and PostgreSQL (a throwaway
local server started with the tests' `PgServer`, fsync off; skipped when
the PostgreSQL binaries are missing). A store module that is not there yet
is reported as "not yet available"."""

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workload as w
from stats import summary

from pilothouse.runtime.messages import Message, Role, ToolCall, Usage

REPO = Path(__file__).resolve().parents[1]
STORE_MODULES = {
    "memory": "pilothouse.runtime.store.memory",
    "sqlite": "pilothouse.runtime.store.sqlite",
    "postgresql": "pilothouse.runtime.store.postgres",
}


@dataclass
class StoreResult:
    store: str
    append_us: dict[str, float] = field(default_factory=dict)
    load_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    error: str | None = None


def turn_messages() -> list[Message]:
    """The four messages one tool-call turn stores."""
    call = ToolCall(w.TOOL_CALL_ID, w.TOOL_NAME, w.TOOL_ARGUMENTS)
    return [
        Message.user(w.USER_MESSAGE, "bench"),
        Message(Role.ASSISTANT, "", tool_calls=[call]),
        Message.tool(w.TOOL_RESULT, w.TOOL_CALL_ID, w.TOOL_NAME),
        Message(Role.ASSISTANT, "".join(w.answer_tokens())),
    ]


async def _new_session(store: Any) -> str:
    from pilothouse.runtime.store.base import SessionRecord

    now = time.time()
    record = SessionRecord(uuid.uuid4().hex, w.AGENT_TURN, "bench", now, now)
    await store.create(record)
    return record.id


async def measure_store(
    name: str, open_store: Callable[[], Awaitable[Any]], appends: int, loads: int,
    history: int, seconds: float,
) -> StoreResult:
    from pilothouse.runtime.store.base import RunOutcome, SessionRecord

    result = StoreResult(name)
    store = await open_store()
    try:
        session_id = await _new_session(store)
        messages = turn_messages()
        samples: list[float] = []
        deadline = time.monotonic() + seconds
        for _ in range(appends):
            if time.monotonic() > deadline:
                break
            run_id = uuid.uuid4().hex
            start = time.perf_counter()
            await store.begin_run(session_id, run_id, lease_s=30.0, now=time.time())
            outcome = RunOutcome(messages, "text_response", Usage(64, 32, 96), 0.01, time.time())
            await store.finish_run(session_id, run_id, outcome)
            samples.append((time.perf_counter() - start) * 1e6)
        result.append_us = summary(samples)

        now = time.time()
        record = SessionRecord(uuid.uuid4().hex, w.AGENT_TURN, "bench", now, now)
        items = [m for _ in range(history // 4) for m in turn_messages()]
        await store.import_session(record, items)
        load_samples: list[float] = []
        deadline = time.monotonic() + seconds
        for _ in range(loads):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            loaded = await store.load_history(record.id)
            load_samples.append((time.perf_counter() - start) * 1000)
            if len(loaded) != len(items):
                raise RuntimeError(f"loaded {len(loaded)} of {len(items)} messages")
        result.load_ms = summary(load_samples)
    finally:
        await store.close()
    return result


def available(name: str) -> str | None:
    """None when the store's module imports, else why not."""
    try:
        importlib.import_module(STORE_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name == STORE_MODULES[name]:
            return "not yet available"
        return f"cannot import: {exc}"
    except Exception as exc:  # a half-written module must not stop the bench
        return f"cannot import: {type(exc).__name__}: {exc}"
    return None


async def measure_all(work: Path, appends: int, loads: int, history: int, seconds: float) -> list[StoreResult]:
    results: list[StoreResult] = []
    for name in STORE_MODULES:
        missing = available(name)
        if missing:
            results.append(StoreResult(name, error=missing))
            continue
        pg = None
        try:
            from pilothouse.runtime.store.factory import open_store

            if name == "memory":
                url, note = "memory://", ""
            elif name == "sqlite":
                path = work / f"store-bench-{uuid.uuid4().hex[:8]}.db"
                url, note = f"sqlite:///{path}", "file in the bench work dir, WAL, synchronous=NORMAL"
            else:
                sys.path.insert(0, str(REPO))
                from tests.pg import start_pg_server

                pg = start_pg_server()
                if pg is None:
                    results.append(StoreResult(name, error="PostgreSQL binaries not found"))
                    continue
                url, note = await pg.new_database(), "local throwaway server, fsync off, over TCP"

            async def opener(url: str = url) -> Any:
                return await open_store(url, data_dir=work)

            result = await measure_store(name, opener, appends, loads, history, seconds)
            result.note = note
            results.append(result)
        except Exception as exc:  # one store failing must not hide the others
            results.append(StoreResult(name, error=f"{type(exc).__name__}: {exc}"))
        finally:
            if pg is not None:
                pg.stop()
    return results
