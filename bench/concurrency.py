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
import contextlib
import time
from dataclasses import dataclass, field

import grpc
import workload as w
from procs import Proc
from stats import summary
from turn import EXPECTED_ANSWER, CpuMeter, create_sessions

from pilothouse.client import CHANNEL_OPTIONS, PilothouseClient

#: Client connections to each address in the concurrency levels (many
#: clients, as in production; one connection would reach one worker only).
CONNECTIONS = 8


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


def _connections(stack: contextlib.AsyncExitStack, address: str, count: int) -> list[PilothouseClient]:
    """`count` clients of `address`, each on its own TCP connection (grpc
    would otherwise share one between the channels of a process): the
    kernel spreads connections, not calls, over the workers of one port."""
    clients = []
    for _ in range(count):
        channel = grpc.aio.insecure_channel(
            address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        )
        stack.push_async_callback(channel.close)
        clients.append(PilothouseClient(channel=channel))
    return clients


async def measure_level(
    addresses: list[str], runtimes: list[Proc], others: list[Proc], runs: int, timeout_s: float,
    connections: int = CONNECTIONS,
) -> Level:
    """`runs` simultaneous turns spread evenly over the runtimes at
    `addresses` (replicas sharing a store) and over `connections` client
    connections to each."""
    level = Level(runs)
    async with contextlib.AsyncExitStack() as stack:
        clients = [c for a in addresses for c in _connections(stack, a, connections)]
        share = -(-runs // len(clients))
        work = [
            (client, session)
            for client in clients
            for session in await create_sessions(client, w.AGENT_DELAY, share)
        ][:runs]
        level.peak_is_lifetime = not all([rt.reset_peak_rss() for rt in runtimes])
        meter = CpuMeter([*runtimes, *others])
        meter.start()
        start = time.perf_counter()
        tasks = [asyncio.create_task(_one_turn(client, s)) for client, s in work]
        done = await _finish(tasks, timeout_s, level, start)
        results = []
        for task in done:
            if task.exception() is not None:
                level.errors.append(repr(task.exception()))
            else:
                results.append(task.result())
        level.cpu_ms = meter.stop(max(len(results), 1))
        level.peak_rss_mb = sum(rt.peak_rss_kb() for rt in runtimes) / 1024
    level.completed = len(results)
    level.turns_per_s = len(results) / level.wall_s if level.wall_s else 0.0
    level.ttfe_ms = summary([r[0] * 1000 for r in results])
    level.started_ms = summary([r[1] * 1000 for r in results])
    level.turn_ms = summary([r[2] * 1000 for r in results])
    return level


async def measure_rate(
    address: str, procs: list[Proc], rate: float, seconds: float, timeout_s: float
) -> Level:
    """Open-loop load: a new turn every 1/`rate` seconds for `seconds`
    (whatever the runtime's pace), each on its own session; `runs` in the
    result is the number started."""
    count = max(int(rate * seconds), 1)
    level = Level(count)
    async with contextlib.AsyncExitStack() as stack:
        clients = _connections(stack, address, CONNECTIONS)
        sessions = await create_sessions(clients[0], w.AGENT_DELAY, count)
        meter = CpuMeter(procs)
        meter.start()
        start = time.perf_counter()
        tasks = []
        for index, session in enumerate(sessions):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            client = clients[index % len(clients)]
            tasks.append(asyncio.create_task(_one_turn(client, session)))
        done = await _finish(tasks, timeout_s, level, start)
        results = [t.result() for t in done if t.exception() is None]
        level.errors += [repr(t.exception()) for t in done if t.exception() is not None][:3]
        level.cpu_ms = meter.stop(max(len(results), 1))
    level.completed = len(results)
    level.turns_per_s = len(results) / level.wall_s if level.wall_s else 0.0
    level.ttfe_ms = summary([r[0] * 1000 for r in results])
    level.started_ms = summary([r[1] * 1000 for r in results])
    level.turn_ms = summary([r[2] * 1000 for r in results])
    return level


async def soak(address: str, runtime: Proc, marks: list[int], in_flight: int = 8) -> dict[str, float]:
    """Tool-call turns one after another (`in_flight` at a time, each on a
    new session) until the last of `marks`; the runtime's RSS in MB after
    each mark (keyed by its count), after a moment to settle."""
    rss: dict[str, float] = {}
    done = 0
    async with PilothouseClient(address) as client:
        for mark in marks:
            while done < mark:
                batch = min(in_flight * 25, mark - done)
                sessions = await create_sessions(client, w.AGENT_TURN, batch)
                async def worker(queue: list[str]) -> None:
                    while queue:
                        session = queue.pop()
                        async for _ in client.stream_to(session, w.USER_MESSAGE, timeout=w.RUN_DEADLINE_S):
                            pass

                queue = list(sessions)
                await asyncio.gather(*(worker(queue) for _ in range(in_flight)))
                done += batch
            await asyncio.sleep(1.0)
            rss[str(mark)] = runtime.rss_kb() / 1024
    return rss


async def _finish(tasks: list, timeout_s: float, level, start: float) -> set:
    """Wait for the turns up to `timeout_s`, cancel what is left (an error of
    the level), set the level's wall time; the finished tasks."""
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    level.wall_s = time.perf_counter() - start
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
        level.errors.append(f"{len(pending)} runs did not finish in {timeout_s:g}s")
    return done
