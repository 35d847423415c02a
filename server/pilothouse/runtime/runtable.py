"""This process's runs: the active run of each session, the queues behind
them, the journals of unfinished runs, and the finished runs kept in memory
for a while (later reads of their events come from the store).

`RemoteRun` and `RunLocation` say where a run is when it is not here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pilothouse.runtime.events import AgentResponse
from pilothouse.runtime.journal import RunJournal
from pilothouse.runtime.runs import Run, StoredRun

log = logging.getLogger("pilothouse.runtime.scheduler")

_EMPTY = contextvars.Context()


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """A run held by another replica, at `owner` (its gRPC address)."""

    owner: str
    session_id: str
    run_id: str


#: Where a run is: here, in the store only, or on another replica.
RunLocation = Run | StoredRun | RemoteRun


class RunTable:
    """The runs of this process, by id and by session.

    `event_retention_s` (seconds) and `finished_runs_kept` (a count) bound
    how long and how many finished runs stay in memory."""

    def __init__(self, *, event_retention_s: float, finished_runs_kept: int) -> None:
        self.event_retention_s = event_retention_s
        self.finished_runs_kept = finished_runs_kept
        #: Called with (run, response, duration_s) when a run ends.
        self.on_run_end: list[Callable[[Run, AgentResponse, float], None]] = []
        self.active_by_session: dict[str, Run] = {}
        #: Queued runs by session (no entry for a session without any).
        self.queues: dict[str, list[Run]] = {}
        self.journals: dict[str, RunJournal] = {}
        #: Runs that ended but whose end is not stored yet (store down).
        self.unsettled: dict[str, Run] = {}
        self._runs: dict[str, Run] = {}
        #: Finished runs still in memory, oldest first.
        self._finished: OrderedDict[str, Run] = OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lookups -------------------------------------------------------------------

    def local(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def active(self, session_id: str) -> Run | None:
        """The session's running run in this process, if any."""
        return self.active_by_session.get(session_id)

    def current(self, session_id: str) -> Run | None:
        """The session's active run here, else its next queued run."""
        return self.active_by_session.get(session_id) or next(iter(self.queues.get(session_id, ())), None)

    def queued(self, session_id: str) -> list[Run]:
        return list(self.queues.get(session_id, ()))

    def session_runs(self, session_id: str) -> list[Run]:
        """The session's active and queued runs here."""
        return [r for r in [self.active_by_session.get(session_id), *self.queues.get(session_id, ())] if r]

    def journal_of(self, run_id: str) -> RunJournal | None:
        return self.journals.get(run_id)

    def unfinished(self) -> list[Run]:
        """Every active and queued run of this process."""
        return [*self.active_by_session.values(), *(r for q in self.queues.values() for r in q)]

    def busiest(self, session_id: str) -> Run | None:
        """The run a new message of the session would wait behind."""
        queue = self.queues.get(session_id)
        return queue[-1] if queue else self.active_by_session.get(session_id)

    # --- changes -------------------------------------------------------------------

    def enqueue(self, run: Run) -> int:
        """Queue the run behind its session's runs; its position (0: next)."""
        queue = self.queues.setdefault(run.session_id, [])
        queue.append(run)
        return len(queue) - 1 + (1 if run.session_id in self.active_by_session else 0)

    def admit(self, run: Run) -> None:
        self._runs[run.id] = run
        self._idle.clear()

    def dequeue(self, run: Run) -> None:
        queue = self.queues.get(run.session_id)
        if queue and run in queue:
            queue.remove(run)
        if queue == []:
            self.queues.pop(run.session_id, None)

    def deactivate(self, run: Run) -> None:
        """The run no longer holds its session here; its journal is dropped."""
        if self.active_by_session.get(run.session_id) is run:
            del self.active_by_session[run.session_id]
        self.journals.pop(run.id, None)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is active or queued; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def ended(self, run: Run, started: float) -> None:
        """Bookkeeping once a run has ended here (`started` is its
        `time.monotonic()` start): memory retention, idleness, observers and
        the run's log line."""
        loop = asyncio.get_running_loop()
        # The timer holds the id only, and an empty context (the current one
        # holds the RPC's spans for as long as the timer waits): a run
        # evicted below is freed at once.
        loop.call_later(self.event_retention_s, self._forget_run_id, run.id, context=_EMPTY)
        self._finished[run.id] = run
        while len(self._finished) > self.finished_runs_kept:
            _, oldest = self._finished.popitem(last=False)
            self._forget_run(oldest)
        if not self.active_by_session and not self.queues:
            self._idle.set()
        response = run.response
        if response is None:
            return  # handed over
        duration = time.monotonic() - started
        for observer in self.on_run_end:
            try:
                observer(run, response, duration)
            except Exception:  # an observer must not break runs
                log.exception("run-end observer failed")
        log.info(
            "run %s on session %s ended: %s after %d rounds in %.3fs "
            "(%d prompt + %d completion tokens)",
            run.id, run.session_id, response.stop_reason.value, response.iterations, duration,
            response.usage.prompt_tokens, response.usage.completion_tokens,
            extra={
                "run_id": run.id,
                "session_id": run.session_id,
                "agent": run.agent,
                "stop_reason": response.stop_reason.value,
                "iterations": response.iterations,
                "input_tokens": response.usage.prompt_tokens,
                "output_tokens": response.usage.completion_tokens,
                "duration_s": round(duration, 6),
            },
        )

    def _forget_run(self, run: Run) -> None:
        self._finished.pop(run.id, None)
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    def _forget_run_id(self, run_id: str) -> None:
        run = self._finished.get(run_id)
        if run is not None:
            self._forget_run(run)
