"""Scenario 4, memory, on a freshly started runtime: its RSS growth per idle
in-memory session (sessions created with `CreateSession`, no history), then
per active stream (runs held open in the middle of their model stream by
the fake server's `bench-hold` model, each with a gRPC client streaming)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import workload as w
from procs import Proc
from turn import create_sessions

from pilothouse.client import PilothouseClient


@dataclass
class MemoryResult:
    idle_sessions: int
    idle_delta_kb: int
    active_streams: int
    active_delta_kb: int
    held: int
    note: str = ""

    @property
    def per_idle_session_bytes(self) -> float:
        return self.idle_delta_kb * 1024 / max(self.idle_sessions, 1)

    @property
    def per_active_stream_bytes(self) -> float:
        return self.active_delta_kb * 1024 / max(self.active_streams, 1)


async def _settled_rss(proc: Proc) -> int:
    """RSS once the process has had a moment to finish what it was doing."""
    await asyncio.sleep(0.5)
    return proc.rss_kb()


async def measure_memory(
    address: str, runtime: Proc, model_base_url: str, sessions: int, streams: int, timeout_s: float
) -> MemoryResult:
    control = model_base_url.removesuffix("/v1") + "/bench"
    async with PilothouseClient(address) as client, httpx.AsyncClient(timeout=10) as http:
        # Warm every code path first so that one-off allocations are not charged.
        await create_sessions(client, w.AGENT_TURN, 200)
        before = await _settled_rss(runtime)
        await create_sessions(client, w.AGENT_TURN, sessions)
        idle_delta = await _settled_rss(runtime) - before

        hold_sessions = await create_sessions(client, w.AGENT_HOLD, streams)
        before = await _settled_rss(runtime)

        async def hold(session_id: str) -> None:
            async for _ in client.stream_to(session_id, w.USER_MESSAGE, timeout=w.RUN_DEADLINE_S):
                pass

        tasks = [asyncio.create_task(hold(s)) for s in hold_sessions]
        deadline = time.monotonic() + timeout_s
        held = 0
        while time.monotonic() < deadline:
            held = (await http.get(control + "/stats")).json()["holding"]
            if held >= streams:
                break
            await asyncio.sleep(0.2)
        active_delta = await _settled_rss(runtime) - before
        await http.post(control + "/release")
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
    note = "" if held >= streams else f"only {held} of {streams} streams were held at once"
    return MemoryResult(sessions, idle_delta, streams, active_delta, held, note)
