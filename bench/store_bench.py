"""Session-store benchmark: append cost per run and load time of a long session.

`await run_store_bench(store_factory)` measures one store:

- append: `runs` runs (default 500, after 20 warm-up runs) on one session,
  each `begin_run` (with its run record) + a final `checkpoint` of 4 messages (a user question, an
  assistant tool call, its ~1 KB tool result, an assistant answer); the
  time of each pair, median / p99 / mean in milliseconds.
- load: `load_history` of a 10,000-message session (stored with
  `import_session`; the same mix of messages, ~4.5 MB of text), median and
  minimum of the 19 loads after the first, and the first one, in
  milliseconds.

`store_factory()` returns a store (or an awaitable of one) on EMPTY
storage; the benchmark opens it (`open()` is idempotent), works in its own
sessions and closes it. Targets (issue 3): under 1 ms per appended run on
SQLite, under 50 ms for the 10,000-message load.

`python bench/store_bench.py` prints a Markdown table for SQLite (a file in
a temporary directory) and, when the PostgreSQL binaries exist, for a
throwaway local PostgreSQL server (`tests/pg.py`). Self-contained: nothing
else in `bench/` is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pilothouse.runtime.messages import Message, Role, ToolCall, Usage
from pilothouse.runtime.store.base import (
    Checkpoint,
    RunRecord,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionStore,
)

_REPO = str(Path(__file__).resolve().parents[1])

#: Targets of issue 3, in milliseconds.
APPEND_TARGET_MS = 1.0
LOAD_TARGET_MS = 50.0

_QUESTION = "Could you work out the compound interest on 2,500 euros at 3.1% over 7 years? " * 2
_ANSWER = "After 7 years at 3.1% compounded yearly, 2,500 euros grows to about 3,102.47 euros. " * 3
_TOOL_OUTPUT = (
    '{"result": 3102.4712, "steps": [' + ", ".join(f"{i * 1.031:.4f}" for i in range(120)) + "]}"
)


def run_messages(i: int, at: float) -> list[Message]:
    """The 4 messages of one benchmark run (about 1.7 KB of JSON)."""
    call_id = f"call_{i:06d}"
    return [
        Message(Role.USER, _QUESTION, sender="bench", created_at=at),
        Message(
            Role.ASSISTANT,
            "",
            tool_calls=[ToolCall(call_id, "calculate", '{"expression":"2500*1.031**7"}')],
            created_at=at + 0.5,
        ),
        Message(
            Role.TOOL, _TOOL_OUTPUT, tool_call_id=call_id, name="calculate", created_at=at + 0.6
        ),
        Message(Role.ASSISTANT, _ANSWER, created_at=at + 1.2),
    ]


def _ms(seconds: list[float]) -> list[float]:
    return sorted(s * 1000.0 for s in seconds)


def _p(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


async def run_store_bench(
    store_factory: Callable[[], SessionStore | Awaitable[SessionStore]],
    *,
    runs: int = 500,
    warmup: int = 20,
    load_messages: int = 10_000,
    loads: int = 20,
) -> dict[str, Any]:
    """Benchmark one store (see the module docstring). Returns
    `{"append_median_ms", "append_p99_ms", "append_mean_ms", "runs",
    "messages_per_run", "load_median_ms", "load_min_ms", "load_first_ms", "load_messages",
    "loads"}`; times in milliseconds."""
    made = store_factory()
    store: SessionStore = await made if inspect.isawaitable(made) else made  # type: ignore[assignment]
    await store.open()
    try:
        now = time.time()
        session = f"bench-{uuid.uuid4().hex}"
        await store.create(SessionRecord(session, "bench", "bench", now, now))
        timings: list[float] = []
        for i in range(warmup + runs):
            messages = run_messages(i, now + i)
            run_id = f"run-{i}"
            started = time.perf_counter()
            record = RunRecord(run_id, session, "bench", _QUESTION, now + i)
            await store.begin_run(session, run_id, lease_s=60.0, now=now + i, new_run=record)
            update = RunUpdate(
                status=RunStatus.FINISHED, stop_reason="text_response",
                usage=Usage(900, 120, 1020), ended_at=now + i + 1.2,
            )  # fmt: skip
            await store.checkpoint(session, run_id, Checkpoint(
                now=now + i + 1.2, messages=messages, run=update, final=True, uptime_s=1.2))  # fmt: skip
            if i >= warmup:
                timings.append(time.perf_counter() - started)
        append = _ms(timings)

        long_session = f"bench-long-{uuid.uuid4().hex}"
        items = [m for i in range(load_messages // 4) for m in run_messages(i, now + i)]
        await store.import_session(
            SessionRecord(long_session, "bench", "bench-long", now, now), items
        )
        load_times: list[float] = []
        for _ in range(loads):
            started = time.perf_counter()
            history = await store.load_history(long_session)
            load_times.append(time.perf_counter() - started)
            assert len(history) == len(items)
        load = _ms(load_times[1:] or load_times)
        return {
            "append_median_ms": statistics.median(append),
            "append_p99_ms": _p(append, 0.99),
            "append_mean_ms": statistics.fmean(append),
            "runs": runs,
            "messages_per_run": 4,
            "load_median_ms": statistics.median(load),
            "load_min_ms": load[0],
            "load_first_ms": load_times[0] * 1000.0,
            "load_messages": len(items),
            "loads": loads,
        }
    finally:
        await store.close()


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of `run_store_bench` results by store name."""
    lines = [
        "| store | append run (4 msgs) median | p99 | mean | load 10k msgs median | min | first |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['append_median_ms']:.3f} ms | {r['append_p99_ms']:.3f} ms "
            f"| {r['append_mean_ms']:.3f} ms | {r['load_median_ms']:.1f} ms "
            f"| {r['load_min_ms']:.1f} ms | {r['load_first_ms']:.1f} ms |"
        )
    lines.append(
        f"\nTargets: append under {APPEND_TARGET_MS:g} ms per run on SQLite; "
        f"a 10,000-message session loads in under {LOAD_TARGET_MS:g} ms."
    )
    return "\n".join(lines)


async def _main() -> int:
    from pilothouse.runtime.store.postgres import PostgresSessionStore
    from pilothouse.runtime.store.sqlite import SqliteSessionStore

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite (WAL file)"] = await run_store_bench(
            lambda: SqliteSessionStore(Path(tmp) / "bench.db")
        )

    sys.path.insert(0, _REPO)  # for tests.pg
    from tests.pg import start_pg_server

    server = await asyncio.to_thread(start_pg_server)
    if server is None:
        print("PostgreSQL binaries not found: PostgreSQL skipped", file=sys.stderr)
    else:
        try:
            dsn = await server.new_database()
            results["PostgreSQL (local, fsync off)"] = await run_store_bench(
                lambda: PostgresSessionStore(dsn)
            )
        finally:
            await asyncio.to_thread(server.stop)
    print(markdown(results))
    sqlite = results["SQLite (WAL file)"]
    ok = sqlite["append_median_ms"] < APPEND_TARGET_MS and all(
        r["load_median_ms"] < LOAD_TARGET_MS for r in results.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
