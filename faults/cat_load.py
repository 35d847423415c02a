"""Load and soak: 1,000 concurrent runs (all must finish, none may fail),
then 10,000 sequential runs with the runtime's RSS sampled: it must level
off (RSS after the last run within 10 % of RSS after the warm-up), and so
must the throughput. `--quick` runs 100 and 300 (too few to judge the
RSS: its figures are reported, not checked).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from client import Client, Ledger, judge_turn
from harness import Stack, rss_kb
from report import CLEAR, UNCLEAR, Category

TEXT = "STOP_REASON_TEXT_RESPONSE"
#: RSS after the last run may exceed RSS after the warm-up by this much.
LEVEL_OFF = 0.10


async def _concurrent(category: Category, stack: Stack, runs: int) -> None:
    clients = [Client(stack.runtime.address) for _ in range(10)]
    try:
        agent = await clients[0].agent("fault.ok")
        sessions = await asyncio.gather(*[clients[i % 10].session(agent) for i in range(runs)])
        started = time.monotonic()
        turns = await asyncio.gather(*[
            clients[i % 10].turn(s, timeout=600) for i, s in enumerate(sessions)
        ])
        wall = time.monotonic() - started
        failed = 0
        for index, turn in enumerate(turns):
            verdict, detail = judge_turn(turn, {TEXT})
            if verdict != CLEAR:
                failed += 1
                category.add(f"concurrent run {index + 1}", verdict, detail)
        category.add(f"concurrent runs completed ({runs - failed} of {runs})", CLEAR,
                     count=runs - failed)
        latencies = sorted(t.seconds for t in turns)
        category.figures[f"{runs} concurrent runs"] = (
            f"{wall:.1f} s wall, {runs / wall:.0f} runs/s, whole turn p50 "
            f"{statistics.median(latencies):.2f} s / p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} s, "
            f"peak RSS {rss_kb(stack.runtime.pid) / 1024:.0f} MB, {failed} failed"
        )
        ledger = Ledger()
        for session in sessions[:50]:
            await ledger.record(clients[0], session)
        lost, invalid = await ledger.audit_all(clients[1])
        if lost or invalid:
            category.add("concurrent runs' histories", CLEAR, lost=lost, invalid=invalid)
    finally:
        for client in clients:
            await client.close()


async def _soak(category: Category, stack: Stack, runs: int) -> None:
    samples: list[tuple[int, float, float]] = []  # (runs done, RSS MB, runs/s since last sample)
    every = max(runs // 20, 50)
    warmup = min(1000, runs // 5)
    failed = 0
    async with Client(stack.runtime.address) as client:
        agent = await client.agent("fault.ok")
        window = time.monotonic()
        for index in range(1, runs + 1):
            session = await client.session(agent)
            turn = await client.turn(session, timeout=60)
            verdict, detail = judge_turn(turn, {TEXT})
            if verdict != CLEAR:
                failed += 1
                category.add(f"sequential run {index}", verdict, detail)
            if index % every == 0 or index == warmup:
                now = time.monotonic()
                rate = (every if index % every == 0 else index % every) / (now - window)
                samples.append((index, rss_kb(stack.runtime.pid) / 1024, rate))
                window = now
    category.add(f"sequential runs completed ({runs - failed} of {runs})", CLEAR, count=runs - failed)
    base = next(s for s in samples if s[0] >= warmup)
    last = samples[-1]
    growth = (last[1] - base[1]) / base[1]
    per_run_kb = (last[1] - base[1]) * 1024 / max(last[0] - base[0], 1)
    rates = [s[2] for s in samples]
    category.figures[f"{runs} sequential runs: RSS (MB) by runs done"] = ", ".join(
        f"{n}: {mb:.0f}" for n, mb, _ in samples
    )
    category.figures[f"{runs} sequential runs: throughput"] = (
        f"{statistics.mean(rates[:3]):.0f} runs/s at the start, {statistics.mean(rates[-3:]):.0f} at the end"
    )
    category.figures[f"{runs} sequential runs: RSS growth after {base[0]} runs"] = (
        f"{base[1]:.0f} → {last[1]:.0f} MB ({growth:+.0%}, {per_run_kb:.1f} KB per run)"
    )
    if runs < 2000:
        return  # too short to tell; the figures above still show the trend
    levels_off = growth <= LEVEL_OFF
    category.add(
        f"RSS levels off over {runs} sequential runs",
        CLEAR if levels_off else UNCLEAR,
        f"{base[1]:.0f} MB after {base[0]} runs, {last[1]:.0f} MB after {last[0]} ({growth:+.0%})",
        known=6,
    )


async def run(category: Category, work, quick: bool) -> None:
    async with Stack.create(work, session_cache_size="1000") as stack:
        await _concurrent(category, stack, 100 if quick else 1000)
        await _soak(category, stack, 300 if quick else 10_000)
