"""Scenario 1, the tool-call turn, and the helpers the other scenarios share.

Pilothouse: `StreamTo` on a fresh session until `done`, timed at the gRPC
client. Baseline: the same two streamed model calls (the exact request
bodies the runtime sent, recorded by the fake server) made directly with
httpx, each stream read line by line and every chunk JSON-decoded, as any
client must. Peers: `peers.py` in the peers' virtualenv. Every sample
starts a new session or run, so the history (and the request) never grows.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import workload as w
from envs import PEERS_PYTHON
from procs import BENCH, Proc

from pilothouse.client import PilothouseClient
from pilothouse.v1 import event_pb2

EXPECTED_ANSWER = "".join(w.answer_tokens())


@dataclass
class Measured:
    """Samples of one row, in milliseconds, and CPU seconds per sample of
    the processes that did the work (by name)."""

    label: str
    loop: str
    samples_ms: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    error: str | None = None


def merge(blocks: list[Measured]) -> Measured:
    """One row out of blocks of the same side: samples joined, CPU per
    sample averaged over all of them, the first error kept."""
    first = blocks[0]
    merged = Measured(first.label, first.loop, note=first.note)
    for block in blocks:
        merged.samples_ms += block.samples_ms
        merged.error = merged.error or block.error
        for name, per_sample in block.cpu_ms.items():
            merged.cpu_ms[name] = merged.cpu_ms.get(name, 0.0) + per_sample * len(block.samples_ms)
    total = max(len(merged.samples_ms), 1)
    merged.cpu_ms = {name: value / total for name, value in merged.cpu_ms.items()}
    return merged


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU time used by some processes (and this one) between `start` and
    `stop`; several start/stop spans add up."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self._before: dict[str, float] = {}
        self._total: dict[str, float] = {}

    def _snapshot(self) -> dict[str, float]:
        now = {p.name: p.cpu_s() for p in self.procs}
        now["client"] = client_cpu_s()
        return now

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self, samples: int) -> dict[str, float]:
        """Milliseconds of CPU per sample, by process, over all spans."""
        after = self._snapshot()
        for name, value in after.items():
            self._total[name] = self._total.get(name, 0.0) + value - self._before[name]
        return {k: v * 1000 / max(samples, 1) for k, v in self._total.items()}


async def create_sessions(client: PilothouseClient, agent: str, count: int) -> list[str]:
    """`count` new sessions, created 100 at a time."""
    ids: list[str] = []
    while len(ids) < count:
        batch = min(100, count - len(ids))
        sessions = await asyncio.gather(*(client.create_session(agent) for _ in range(batch)))
        ids += [s.id for s in sessions]
    return ids


async def pilothouse_turn(client: PilothouseClient, session_id: str) -> float:
    """One tool-call turn; seconds from the call until `done`. Raises if the
    turn did not go as scripted."""
    start = time.perf_counter()
    done: event_pb2.AgentResponse | None = None
    tool_output = ""
    async for event in client.stream_to(session_id, w.USER_MESSAGE, timeout=w.RUN_DEADLINE_S):
        if event.HasField("tool_result"):
            tool_output = event.tool_result.output or event.tool_result.error
        elif event.HasField("done"):
            done = event.done
    elapsed = time.perf_counter() - start
    if done is None or done.final_response != EXPECTED_ANSWER or tool_output != w.TOOL_RESULT:
        raise RuntimeError(
            f"unexpected turn: tool {tool_output!r}, done {done and done.final_response!r} "
            f"{done and done.error!r}"
        )
    return elapsed


async def measure_pilothouse(
    address: str, loop: str, procs: list[Proc], turns: int, warmup: int, seconds: float
) -> Measured:
    row = Measured("Pilothouse (gRPC client → runtime → ToolExecutor)", loop)
    async with PilothouseClient(address) as client:
        sessions = await create_sessions(client, w.AGENT_TURN, turns + warmup)
        for session_id in sessions[:warmup]:
            await pilothouse_turn(client, session_id)
        meter = CpuMeter(procs)
        meter.start()
        deadline = time.monotonic() + seconds
        for session_id in sessions[warmup:]:
            if time.monotonic() > deadline:
                break
            row.samples_ms.append(await pilothouse_turn(client, session_id) * 1000)
        row.cpu_ms = meter.stop(len(row.samples_ms))
    return row


async def recorded_bodies(base_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tool-call and answer request bodies the runtime last sent."""
    async with httpx.AsyncClient() as http:
        reply = (await http.get(base_url.removesuffix("/v1") + "/bench/requests")).json()
    return reply["tool_call"], reply["answer"]


async def _stream_call(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    chunks = 0
    async with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                json.loads(line[6:])
                chunks += 1
    return chunks


async def _raw_pull(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    size = 0
    async with http.stream("POST", url, json=body) as response:
        async for data in response.aiter_raw():
            size += len(data)
    return size


async def measure_httpx(
    base_url: str, loop: str, model: Proc, turns: int, warmup: int, seconds: float, *, raw: bool = False
) -> Measured:
    """The two model calls of a turn made directly; with `raw`, the body is
    pulled without any parsing (the model server's own floor)."""
    if raw:
        row = Measured("model server alone: both streams pulled raw, no parsing", loop)
    else:
        row = Measured("baseline: the same two streamed model calls, raw httpx", loop)
    tool_call_body, answer_body = await recorded_bodies(base_url)
    url = base_url + "/chat/completions"
    call = _raw_pull if raw else _stream_call
    headers = {"Accept": "text/event-stream"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        for _ in range(warmup):
            await call(http, url, tool_call_body)
            await call(http, url, answer_body)
        meter = CpuMeter([model])
        meter.start()
        deadline = time.monotonic() + seconds
        while len(row.samples_ms) < turns and time.monotonic() < deadline:
            start = time.perf_counter()
            await call(http, url, tool_call_body)
            await call(http, url, answer_body)
            row.samples_ms.append((time.perf_counter() - start) * 1000)
        row.cpu_ms = meter.stop(len(row.samples_ms))
    return row


def measure_peer(
    peer: str, base_url: str, model: Proc, turns: int, warmup: int, seconds: float,
    env: dict[str, str],
) -> Measured:
    """Run `peers.py` for one peer in the peers' virtualenv."""
    row = Measured(f"peer: {peer}", "uvloop")
    before = model.cpu_s()
    try:
        result = subprocess.run(
            [
                str(PEERS_PYTHON), str(BENCH / "peers.py"), "--base-url", base_url, "--peer", peer,
                "--turns", str(turns), "--warmup", str(warmup), "--seconds", str(seconds),
            ],
            capture_output=True, text=True, timeout=seconds * 3 + 120, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        row.error = "timed out"
        return row
    model_cpu = model.cpu_s() - before
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        row.error = f"no result (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        return row
    row.loop = data.get("loop", row.loop)
    row.note = data.get("version", "")
    if data.get("error"):
        row.error = data["error"]
        return row
    row.samples_ms = data["samples_ms"]
    n = max(len(row.samples_ms), 1)
    # The model server also served the warm-up turns: count only its share.
    row.cpu_ms = {peer: data["cpu_s"] * 1000 / n, model.name: model_cpu * 1000 / (n + warmup)}
    return row
