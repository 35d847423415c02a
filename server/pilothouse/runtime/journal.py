"""A run's durable record: checkpoints of its history and state, and the
batched writes of its event log.

`RunJournal` is what the agent loop and the tool phase write through: the
steering messages it appended, the round in progress (each call's state,
before the call has effects), every completed round, compactions, and at
the end the outcome with `done`. Each write is one store transaction that
also carries the run's events logged since the last write, so a
checkpoint and the events leading to it become durable together.

Between checkpoints, events are written in batches by the `EventWriter`
(one transaction for every run's new events, every `interval_s`), so a
streamed token does not pay for a commit. Live subscribers never wait for
either: they read the run's in-memory log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pilothouse.errors import PilothouseError, UnavailableError
from pilothouse.runtime import eventcodec
from pilothouse.runtime.events import AgentStep, RunEvent
from pilothouse.runtime.messages import Message, Role, Usage
from pilothouse.runtime.store.base import (
    Checkpoint,
    RunStatus,
    RunUpdate,
    SessionRecord,
    SessionStore,
)
from pilothouse.runtime.toolphase import RoundState, round_to_json

log = logging.getLogger(__name__)

#: Seconds between two batched writes of the event log.
DEFAULT_FLUSH_INTERVAL_S = 0.05
#: Pauses before retrying a checkpoint the store refused as unavailable.
RETRY_DELAYS_S = (0.1, 0.5, 1.5)


class EventWriter:
    """Writes the events of every run on this replica in batches."""

    def __init__(self, store: SessionStore, interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        self.store = store
        self.interval_s = interval_s
        self._dirty: dict[str, RunJournal] = {}
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_runs: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        #: Called after every write that stored events (wakes the event feed).
        self.on_written: Callable[[], None] | None = None

    def written(self) -> None:
        if self.on_written is not None:
            self.on_written()

    def mark(self, journal: RunJournal) -> None:
        """`journal` has events to write."""
        self._dirty[journal.run_id] = journal

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="event-writer")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except Exception:  # the writer must outlive a bad batch
                log.exception("writing the event log failed")

    async def flush(self) -> None:
        """Write every run's pending events now (one transaction). Events
        the store refuses are kept for the next attempt."""
        if not self._dirty or self._inflight is not None:
            return
        journals = list(self._dirty.values())
        self._dirty.clear()
        taken = [(j, j.take()) for j in journals]
        taken = [(j, events) for j, events in taken if events]
        if not taken:
            return
        self._inflight = asyncio.get_running_loop().create_future()
        self._inflight_runs = {j.run_id for j, _ in taken}
        try:
            await self.store.append_events(
                [eventcodec.encode(e) for _, events in taken for e in events]
            )
        except PilothouseError as exc:
            log.warning("event log batch not written (kept for the next one): %s", exc.message)
            for journal, events in taken:
                journal.put_back(events)
        else:
            self.written()
        finally:
            inflight, self._inflight = self._inflight, None
            self._inflight_runs = set()
            inflight.set_result(None)

    async def settle(self, run_id: str) -> None:
        """Wait for a batch in flight that holds events of `run_id`, so a
        checkpoint's events follow it in the store."""
        if self._inflight is not None and run_id in self._inflight_runs:
            await asyncio.shield(self._inflight)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._inflight is not None:
            await asyncio.shield(self._inflight)
        await self.flush()


class RunJournal:
    """The durable side of one run (see the module docstring).

    `tail` counts the run's messages at the end of the session's visible
    history (the user message, steering, completed rounds; reset by a
    compaction), so a resumed run can find its steps again. Writes are
    serialised; one the store refuses as unavailable is retried a few
    times, then raised (the run ends with ERROR, history valid).
    """

    def __init__(
        self,
        store: SessionStore,
        writer: EventWriter,
        session_id: str,
        run_id: str,
        *,
        clock: Callable[[], float],
        steps: list[dict[str, Any]] | None = None,
        tail: int = 1,
        principal: str = "",
        roles: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.writer = writer
        self.session_id = session_id
        self.run_id = run_id
        self.clock = clock
        self.steps: list[dict[str, Any]] = steps or []
        self.tail = tail
        #: The replica writing (fencing: a write is refused once another
        #: replica took the run over).
        self.owner = ""
        #: Who the run is for (its tools learn it), kept across resumes.
        self.principal = principal
        self.roles = roles
        self.usage = Usage()
        for meta in self.steps:
            self.usage = self.usage + Usage(**meta.get("usage", {}))
        self._pending: list[RunEvent] = []
        self._lock = asyncio.Lock()
        #: The round whose tool phase is in progress (its latest state).
        self.round: RoundState | None = None
        #: The session record after the latest write.
        self.session: SessionRecord | None = None
        #: Called with an "approve always" tool name to store it.
        self.remember_approval: Callable[[str], Awaitable[None]] | None = None
        #: A guest turn's agent: its assistant messages get it as `sender`.
        self.speaker = ""

    # --- the event log's sink ------------------------------------------------

    def record(self, recorded: RunEvent) -> None:
        self._pending.append(recorded)
        self.writer.mark(self)

    def take(self) -> list[RunEvent]:
        events, self._pending = self._pending, []
        return events

    def put_back(self, events: list[RunEvent]) -> None:
        self._pending[:0] = events
        if self._pending:
            self.writer.mark(self)

    # --- checkpoints -----------------------------------------------------------

    def state(self, round_state: RoundState | None = None) -> dict[str, Any]:
        """The run record's checkpoint state."""
        return {
            "principal": self.principal,
            "roles": list(self.roles),
            "steps": self.steps,
            "tail": self.tail,
            "round": round_to_json(round_state) if round_state is not None else None,
        }

    async def write(self, checkpoint: Checkpoint, extra: list[RunEvent] | None = None) -> SessionRecord:
        """Write `checkpoint` with the run's pending events (and `extra`,
        events not yet in the log) in one transaction."""
        async with self._lock:
            for delay in (*RETRY_DELAYS_S, None):
                await self.writer.settle(self.run_id)
                events = self.take()
                checkpoint.events = [eventcodec.encode(e) for e in [*events, *(extra or ())]]
                checkpoint.owner = self.owner
                try:
                    self.session = await self.store.checkpoint(self.session_id, self.run_id, checkpoint)
                    if checkpoint.events:
                        self.writer.written()
                    return self.session
                except UnavailableError as exc:
                    self.put_back(events)
                    if delay is None:
                        raise
                    log.warning("run %s: checkpoint failed, retrying: %s", self.run_id, exc.message)
                    await asyncio.sleep(delay)
                except BaseException:
                    self.put_back(events)
                    raise
        raise AssertionError("unreachable")

    async def steered(self, messages: list[Message]) -> None:
        self.tail += len(messages)
        await self.write(Checkpoint(now=self.clock(), messages=messages,
                                    run=RunUpdate(state=self.state())))

    async def tool_round(self, state: RoundState) -> None:
        self.round = state
        status = RunStatus.WAITING_FOR_DECISION if state.waiting else RunStatus.RUNNING
        await self.write(Checkpoint(now=self.clock(), run=RunUpdate(status=status, state=self.state(state))))

    async def round_done(self, messages: list[Message], step: AgentStep) -> None:
        self.round = None
        if self.speaker:
            for message in messages:
                if message.role is Role.ASSISTANT:
                    message.sender = self.speaker
        self.steps.append(_step_meta(step))
        self.usage = self.usage + step.usage
        self.tail += len(messages)
        await self.write(Checkpoint(
            now=self.clock(),
            messages=messages,
            run=RunUpdate(
                status=RunStatus.RUNNING,
                iterations=len(self.steps),
                usage=self.usage,
                state=self.state(),
            ),
        ))

    async def compacted(self, summary: str) -> None:
        self.tail = 0
        await self.write(Checkpoint(now=self.clock(), compact_summary=summary,
                                    run=RunUpdate(state=self.state())))

    async def finish(
        self,
        done: RunEvent,
        *,
        stop_reason: str,
        error: str,
        usage: Usage,
        iterations: int,
        uptime_s: float,
    ) -> SessionRecord:
        """The final checkpoint: `done` (not yet in the log) with the last
        events, the run's outcome, and the session's lease released."""
        now = self.clock()
        return await self.write(
            Checkpoint(
                now=now,
                run=RunUpdate(
                    status=RunStatus.FINISHED,
                    stop_reason=stop_reason,
                    error=error,
                    usage=usage,
                    iterations=iterations,
                    ended_at=now,
                    state=self.state(),
                ),
                final=True,
                uptime_s=uptime_s,
            ),
            [done],
        )

    async def hand_over(self) -> None:
        """Give the run up for another replica to resume: its state (the
        round in progress, as it is now) and events are stored and the
        session's lease released."""
        round_state = self.round
        state = self.state(round_state)
        state["handed_over"] = True
        status = RunStatus.WAITING_FOR_DECISION if round_state and round_state.waiting else RunStatus.RUNNING
        await self.write(Checkpoint(
            now=self.clock(),
            run=RunUpdate(status=status, state=state),
            release=True,
        ))


def _step_meta(step: AgentStep) -> dict[str, Any]:
    return {"usage": eventcodec.encode_value(step.usage), "finish_reason": step.finish_reason}

