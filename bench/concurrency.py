"""Scenario 3, concurrency: N simultaneous tool-call turns, one session each
(the runtime allows one active run per session), against a model server
that waits a fixed delay before every chunk.

For each run the client records when its `StreamTo` call started, when the
first event arrived and when `done` arrived; the first event's own
timestamp (set by the runtime when it recorded `run_started`) tells how much
of the wait was spent before the runtime started the run. The runtime's
peak RSS is reset before each level (Linux `clear_refs`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import workload as w
from procs import Proc
from stats import summary
from turn import EXPECTED_ANSWER, CpuMeter, create_sessions

from pilothouse.client import PilothouseClient


@dataclass
class Level:
    """The outcome of one concurrency level; times in milliseconds."""

    runs: int
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    turns_per_s: float = 0.0
    ttfe_ms: dict[str, float] = field(default_factory=dict)
    started_ms: dict[str, float] = field(default_factory=dict)
    turn_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_is_lifetime: bool = False
    cpu_ms: dict[str, float] = field(default_factory=dict)


async def _one_turn(client: PilothouseClient, session_id: str) -> tuple[float, float, float]:
    """(time to first event, runtime-side start delay, whole turn), seconds."""
    wall_start = time.time()
    start = time.perf_counter()
    first = started = 0.0
    final = None
    async for event in client.stream_to(session_id, w.USER_MESSAGE, timeout=w.RUN_DEADLINE_S):
        if not first:
            first = time.perf_counter() - start
            started = event.time.seconds + event.time.nanos / 1e9 - wall_start
        if event.HasField("done"):
            final = event.done
    if final is None or final.final_response != EXPECTED_ANSWER:
        raise RuntimeError(f"run ended with {final and final.error!r}")
    return first, started, time.perf_counter() - start


async def measure_level(
    address: str, runtime: Proc, others: list[Proc], runs: int, timeout_s: float
) -> Level:
    level = Level(runs)
    async with PilothouseClient(address) as client:
        sessions = await create_sessions(client, w.AGENT_DELAY, runs)
        level.peak_is_lifetime = not runtime.reset_peak_rss()
        meter = CpuMeter([runtime, *others])
        meter.start()
        start = time.perf_counter()
        tasks = [asyncio.create_task(_one_turn(client, s)) for s in sessions]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        level.wall_s = time.perf_counter() - start
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            level.errors.append(f"{len(pending)} runs did not finish in {timeout_s:g}s")
        results = []
        for task in done:
            if task.exception() is not None:
                level.errors.append(repr(task.exception()))
            else:
                results.append(task.result())
        level.cpu_ms = meter.stop(max(len(results), 1))
        level.peak_rss_mb = runtime.peak_rss_kb() / 1024
    level.completed = len(results)
    level.turns_per_s = len(results) / level.wall_s if level.wall_s else 0.0
    level.ttfe_ms = summary([r[0] * 1000 for r in results])
    level.started_ms = summary([r[1] * 1000 for r in results])
    level.turn_ms = summary([r[2] * 1000 for r in results])
    return level
