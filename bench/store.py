"""Scenario 5, session stores, in the bench process: the cost of storing one
durable tool-call turn as the runtime does per run (`durable_turn`:
`begin_run` with the user message, its run record and first event, a
checkpoint of the tool round, a checkpoint of the run's state, the final
checkpoint with the answer, and the turn's events in batches) and the time
to load a 10,000-message session (`load_history`), for every store that
exists in the tree: memory, SQLite
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
from pilothouse.runtime.store.base import Checkpoint, RunRecord, RunStatus, RunUpdate, StoredEvent

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
    #: One checkpoint (a round's messages, events and run record), µs.
    checkpoint_us: dict[str, float] = field(default_factory=dict)
    load_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    error: str | None = None


def turn_events(run_id: str) -> list[StoredEvent]:
    """The events of one tool-call turn, as the durable log stores them
    (about 30 events of 60-120 bytes of JSON)."""
    kinds = ["run_started", "tool_calls_begin", "tool_calls_start", "tool_result",
             "tool_calls_complete", "usage", "text_start"]  # fmt: skip
    kinds += ["text_delta"] * len(w.answer_tokens()) + ["text_end", "usage", "done"]
    now = time.time()
    return [
        StoredEvent(run_id, i + 1, now, kind,
                    f'{{"session_id":"bench","run_id":"{run_id}","sequence":{i + 1},"{kind}":{{}}}}')
        for i, kind in enumerate(kinds)
    ]  # fmt: skip


async def _timed(samples: list[float], work: Awaitable[Any]) -> None:
    start = time.perf_counter()
    await work
    samples.append((time.perf_counter() - start) * 1e6)


async def durable_turn(
    store: Any, session_id: str, run_id: str, messages: list[Message],
    checkpoints: list[float] | None = None,
) -> None:
    """One tool-call turn through the store, as the runtime writes it; the
    time of each of its three checkpoints (one per round, and the state
    between them) is appended to `checkpoints`, in µs."""
    timings = checkpoints if checkpoints is not None else []
    question, call, result, answer = messages
    events = turn_events(run_id)
    now = time.time()
    record = RunRecord(run_id, session_id, w.AGENT_TURN, question.content, now, sender="bench",
                       agent_version=1, agent_config={"name": w.AGENT_TURN, "tools": [w.TOOL_NAME]},
                       owner="127.0.0.1:50051")  # fmt: skip
    await store.begin_run(session_id, run_id, lease_s=30.0, now=now, messages=[question],
                          new_run=record, events=events[:1])  # fmt: skip
    await _timed(timings, store.checkpoint(session_id, run_id, Checkpoint(
        now=now, messages=[call, result], events=events[1:6],
        run=RunUpdate(iterations=1, usage=Usage(40, 16, 56)))))  # fmt: skip
    await store.append_events(events[6:16])  # the answer streams: batched
    await _timed(timings, store.checkpoint(session_id, run_id, Checkpoint(
        now=now, events=events[16:20], run=RunUpdate(state={"round": 2, "pending": []}))))  # fmt: skip
    await store.append_events(events[20:-3])
    await _timed(timings, store.checkpoint(session_id, run_id, Checkpoint(
        now=time.time(), messages=[answer], events=events[-3:], final=True, uptime_s=0.01,
        run=RunUpdate(status=RunStatus.FINISHED, stop_reason="text_response", iterations=2,
                      usage=Usage(64, 32, 96), ended_at=time.time()))))  # fmt: skip


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
    from pilothouse.runtime.store.base import SessionRecord

    result = StoreResult(name)
    store = await open_store()
    try:
        session_id = await _new_session(store)
        messages = turn_messages()
        samples: list[float] = []
        checkpoints: list[float] = []
        deadline = time.monotonic() + seconds
        for _ in range(appends):
            if time.monotonic() > deadline:
                break
            run_id = uuid.uuid4().hex
            start = time.perf_counter()
            await durable_turn(store, session_id, run_id, messages, checkpoints)
            samples.append((time.perf_counter() - start) * 1e6)
        result.append_us = summary(samples)
        result.checkpoint_us = summary(checkpoints)

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
