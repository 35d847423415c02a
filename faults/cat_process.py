"""Process faults: `kill -9` of the runtime at each point of a run (waiting
for the model, mid-answer, during a tool call, between rounds, right after
`done`) and a restart on the same port and SQLite file; SIGTERM while
streams are open; two runtimes on one SQLite file; PostgreSQL restarted
(crashed) in the middle of runs.

Nothing acknowledged may be lost and no history may be left invalid; a
SIGTERM'd runtime delivers `done` on its streams and exits 0; after a
restart the session takes a new message at once (defect 7 while it is
open: the lease of the killed run keeps it locked).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid

import grpc
from client import Client, Ledger, judge_turn
from harness import REPO, Stack, runtime_proc
from report import CLEAR, CRASH, UNCLEAR, Category

from pilothouse.v1 import run_service_pb2 as runs_pb

TEXT, CANCELLED = "STOP_REASON_TEXT_RESPONSE", "STOP_REASON_CANCELLED"
#: (point, the agent's model, the event at which the runtime is killed)
KILL_POINTS = [
    ("waiting for the model's first byte", "fault.slow-first:20000", "run_started", ()),
    ("mid-answer", "fault.slow:200:50", "text_delta", ()),
    ("during a tool call", 'fault.tool:sleep_ms:{"ms": 20000}', "tool_calls_start", ("sleep_ms",)),
    ("between rounds (after a tool result)", "fault.tool-then-slow:current_time:{}",
     "tool_result", ("current_time",)),
    ("right after done", "fault.ok", "done", ()),
]


async def _accepts(client: Client, session: str) -> grpc.aio.AioRpcError | None:
    """Whether the session takes a new message now: None if a run started
    (it is cancelled again), else the refusal."""
    call = client.runs.StreamTo(
        runs_pb.StreamToRequest(session_id=session, content=f"again {uuid.uuid4().hex}"),
        timeout=30,
    )
    try:
        async for _ in call:
            break
    except grpc.aio.AioRpcError as exc:
        return exc
    finally:
        call.cancel()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await client.runs.Cancel(runs_pb.CancelRequest(session_id=session), timeout=30)
    return None


async def _kill_at(category: Category, stack: Stack, point: str, model: str, event_kind: str,
                   tools: tuple[str, ...], measure_lock: bool) -> None:
    async with Client(stack.runtime.address) as client:
        session = await client.new_session(model, tools)
        # Something acknowledged before the crash: one finished turn.
        first = await client.turn(session, timeout=60)
        ledger = Ledger()
        await ledger.record(client, session)
        killed = asyncio.Event()

        async def kill(event) -> None:
            if event.WhichOneof("event") == event_kind and not killed.is_set():
                stack.runtime.kill9()
                killed.set()

        turn = await client.turn(session, timeout=60, on_event=kill)
    name = f"kill -9 {point}"
    if not killed.is_set() or first.done is None:
        category.add(name, CRASH, f"the run never reached {event_kind}: {first.describe()} / {turn.describe()}")
        return
    await stack.start_runtime()
    run_id = turn.events[0].run_id if turn.events else ""
    async with Client(stack.runtime.address) as client:
        # The restarted process takes its own run back at once (resume
        # policy `resume`): the run is resumed, not left locked.
        started = time.monotonic()
        resumed = await _resumed_or_settled(client, run_id)
        await _wait_finished(client, run_id)
        lost, invalid = await ledger.audit(client, session)
        lost += await _unstored_answers(client, {session: turn})
        refusal = await _accepts(client, session)
        if not resumed:
            verdict, detail = UNCLEAR, "the killed run was not taken over at once after the restart"
        elif refusal is not None:
            verdict, detail = UNCLEAR, (
                f"after the resumed run: {refusal.code().name}: {(refusal.details() or '')[:100]}")
        else:
            verdict, detail = CLEAR, "resumed at once after the restart; then new messages are taken"
        category.add(name, verdict, detail, lost=lost, invalid=invalid,
                     known=7 if verdict is UNCLEAR else None)
        if measure_lock:
            category.figures["run taken over after kill -9 and restart"] = (
                f"{time.monotonic() - started:.1f} s to resume and finish (lease 30 s)")


async def _resumed_or_settled(client: Client, run_id: str, timeout: float = 5.0) -> bool:
    """Whether the run was taken over (attempt >= 1) or had already ended,
    within `timeout` seconds of the restart."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = (await client.runs.GetRun(runs_pb.GetRunRequest(run_id=run_id), timeout=10)).run
        except grpc.aio.AioRpcError:
            run = None
        if run is not None and (run.attempt >= 1 or run.status == runs_pb.RUN_STATUS_FINISHED):
            return True
        await asyncio.sleep(0.1)
    return False


async def _wait_finished(client: Client, run_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            run = (await client.runs.GetRun(runs_pb.GetRunRequest(run_id=run_id), timeout=10)).run
            if run.status in (runs_pb.RUN_STATUS_FINISHED, runs_pb.RUN_STATUS_INTERRUPTED):
                return
        await asyncio.sleep(0.2)


async def _unstored_answers(client: Client, turns: dict) -> int:
    """Messages of runs whose `done` (with an answer) arrived but that the
    store does not have: a user message and an answer each."""
    missing = 0
    for session, turn in turns.items():
        done = turn.done
        if done is None or not done.final_response:
            continue
        answers = [m.content for m in await client.messages(session)]
        missing += 0 if done.final_response in answers else 2
    return missing


async def _sigterm(category: Category, stack: Stack) -> None:
    async with Client(stack.runtime.address) as client:
        sessions = [await client.new_session("fault.slow:100:20") for _ in range(5)]
        started = asyncio.Event()
        count = 0

        async def on_event(event) -> None:
            nonlocal count
            if event.HasField("run_started"):
                count += 1
                if count == len(sessions):
                    started.set()

        turns = [asyncio.create_task(client.turn(s, timeout=60, on_event=on_event)) for s in sessions]
        await asyncio.wait_for(started.wait(), 30)
        stack.runtime.terminate()
        results = await asyncio.gather(*turns)
        code = await stack.runtime.wait_exit(30)
    for index, turn in enumerate(results):
        verdict, detail = judge_turn(turn, {TEXT, CANCELLED})
        category.add(f"SIGTERM: stream {index + 1} of 5 gets done", verdict, detail)
    category.add("SIGTERM: the runtime exits 0", CLEAR if code == 0 else CRASH, f"exit code {code}")
    await stack.start_runtime()
    async with Client(stack.runtime.address) as client:
        ledger = Ledger()
        for session in sessions:
            await ledger.record(client, session)
        lost = await _unstored_answers(client, dict(zip(sessions, results, strict=True)))
        _, invalid = await ledger.audit_all(client)
        category.add("SIGTERM: the drained runs' histories", CLEAR, lost=lost, invalid=invalid)


async def _two_on_one_file(category: Category, stack: Stack) -> None:
    second = runtime_proc(stack.work, stack.model, stack.tools, name="runtime-2")
    second.env = {**stack.runtime.env, "PILOTHOUSE_LISTEN_ADDRESS": second.address}
    stack.extra.append(second)
    await stack.start_runtime(second)
    async with Client(stack.runtime.address) as one, Client(second.address) as two:
        sessions = [await (one if i % 2 else two).new_session("fault.ok") for i in range(10)]
        turns = await asyncio.gather(*[
            (one if i % 2 else two).turn(s, timeout=60) for i, s in enumerate(sessions)
        ])
        # The same session from both at once: one run, one clear refusal.
        shared = await one.session(await one.agent("fault.slow:50:20"))
        both = await asyncio.gather(one.turn(shared, timeout=60), two.turn(shared, timeout=60))
        ledger = Ledger()
        for session in [*sessions, shared]:
            await ledger.record(one, session)
        lost, invalid = await ledger.audit_all(two)  # the other runtime reads the same
    bad = [t.describe() for t in turns if judge_turn(t, {TEXT})[0] != CLEAR]
    category.add("two runtimes on one SQLite file: runs on both", CLEAR if not bad else UNCLEAR,
                 "; ".join(bad)[:200], lost=lost, invalid=invalid)
    outcomes = sorted(t.stop_reason or (t.error.code().name if t.error else "?") for t in both)
    fine = outcomes.count(TEXT) == 1 and all(
        t.done is not None or (t.error and t.error.code() is grpc.StatusCode.FAILED_PRECONDITION)
        for t in both
    )
    category.add("two runtimes on one SQLite file: one session from both at once",
                 CLEAR if fine else UNCLEAR, ", ".join(outcomes))
    await second.stop()


async def _postgres_restart(category: Category, work, quick: bool) -> None:
    sys.path.insert(0, str(REPO))
    from tests.pg import PgServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        category.figures["PostgreSQL restarted mid-run"] = "skipped: no PostgreSQL binaries"
        return
    with PgServer(bin_dir, durable=True) as pg:
        dsn = await pg.new_database()
        async with Stack.create(work / "pg", store_url=dsn) as stack, Client(stack.runtime.address) as client:
            ledger = Ledger()
            committed = [await client.new_session("fault.slow:100:30") for _ in range(3)]
            for session in committed:
                await client.turn(session, timeout=60)
                await ledger.record(client, session)
            turns = [asyncio.create_task(client.turn(s, timeout=90)) for s in committed]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.restart)
            results = await asyncio.gather(*turns)
            for index, turn in enumerate(results):
                verdict, detail = judge_turn(turn, {TEXT, "STOP_REASON_ERROR"})
                category.add(f"PostgreSQL restarted mid-run: run {index + 1} of 3 ends", verdict, detail)
            deadline = time.monotonic() + 30
            after = await client.turn(await client.new_session("fault.ok"), timeout=30)
            while after.done is None and time.monotonic() < deadline:
                await asyncio.sleep(1)
                after = await client.turn(await client.new_session("fault.ok"), timeout=30)
            lost, invalid = await ledger.audit_all(client)
            verdict, detail = judge_turn(after, {TEXT})
            category.add("PostgreSQL restarted: new runs work again, nothing lost", verdict, detail,
                         lost=lost, invalid=invalid)


async def run(category: Category, work, quick: bool) -> None:
    async with Stack.create(work / "main", run_lease="30") as stack:
        points = KILL_POINTS[1:3] if quick else KILL_POINTS
        for index, (point, model, event_kind, tools) in enumerate(points):
            await _kill_at(category, stack, point, model, event_kind, tools,
                           measure_lock=index == 0 and not quick)
        await _sigterm(category, stack)
        await _two_on_one_file(category, stack)
    await _postgres_restart(category, work, quick)
