"""Takeover: runs whose process is gone continue elsewhere.

A replica renews the leases of its runs; a run whose lease expired (its
process died) or was released (a draining replica handed it over) is
claimed by the next replica that polls, or by this process when it starts
again. A claimed run is resumed from its last checkpoint with a
`run_resumed` event, waits again in its session's queue when it had not
begun, or, under the resume policy `interrupt`, is ended as INTERRUPTED.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pilothouse.errors import PilothouseError
from pilothouse.runtime.agents import AgentRegistry
from pilothouse.runtime.events import AgentResponse, Done, RunResumed, StopReason
from pilothouse.runtime.execution import RunExecutor
from pilothouse.runtime.limits import ResumePolicy, RuntimeLimits
from pilothouse.runtime.runtable import RunTable
from pilothouse.runtime.store.base import RunRecord, RunStatus, SessionStore

log = logging.getLogger("pilothouse.runtime.scheduler")


class Takeover:
    """Keeps this replica's leases and takes over the runs of gone ones.

    `paused` (set while draining) stops taking over other replicas' runs."""

    def __init__(self, *, store: SessionStore, agents: AgentRegistry, limits: RuntimeLimits,
                 table: RunTable, executor: RunExecutor) -> None:
        self.store = store
        self.agents = agents
        self.limits = limits
        self.table = table
        self.executor = executor
        self.paused = False

    async def keep_leases(self) -> None:
        """Renew this process's run leases; a run that lost its lease (another
        replica took it over) is stopped."""
        while True:
            await asyncio.sleep(self.limits.lease_s / 3)
            for run in [*self.table.active_by_session.values(), *self.table.unsettled.values()]:
                try:
                    held = await self.store.renew_run(
                        run.session_id, run.id, lease_s=self.limits.lease_s, now=time.time(),
                        owner=self.executor.owner,
                    )
                except PilothouseError as exc:
                    log.warning("run %s: lease renewal failed: %s", run.id, exc.message)
                    continue
                if not held:
                    run.stop(StopReason.ERROR, "the session's run lease was lost")

    async def poll_claims(self) -> None:
        while True:
            await asyncio.sleep(self.limits.resume_poll_s)
            if self.paused:
                continue
            try:
                await self.claim()
            except PilothouseError as exc:
                log.warning("looking for runs to take over failed: %s", exc.message)

    async def prune(self) -> None:
        interval = max(min(self.limits.event_log_retention_s / 4, 3600.0), 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                pruned = await self.store.prune_events(time.time() - self.limits.event_log_retention_s)
                if pruned:
                    log.info("pruned %d stored events of finished runs", pruned)
            except PilothouseError as exc:
                log.warning("pruning stored events failed: %s", exc.message)

    async def claim(self, stale_owner: str = "") -> list[str]:
        """Take over the runs whose process is gone (and, with
        `stale_owner`, this process's runs from before a restart): resume
        them, or end them as INTERRUPTED under the `interrupt` policy."""
        records = await self.store.claim_runs(
            self.executor.owner, now=time.time(), lease_s=self.limits.lease_s, stale_owner=stale_owner
        )
        for record in records:
            if self.table.local(record.id) is not None:
                continue
            if record.status is RunStatus.QUEUED:
                self._requeue(record)
            elif self.limits.resume_policy is ResumePolicy.INTERRUPT:
                await self._interrupt(record)
            else:
                await self._resume(record)
        return [r.id for r in records]

    async def _resume(self, record: RunRecord) -> None:
        """Continue a claimed run from its last checkpoint."""
        run, journal = self.executor.revive(record)
        run.status = RunStatus.RUNNING
        agent = self.agents.build(record.agent_config, version=record.agent_version)
        reason = "handover" if record.state.get("handed_over") else "lease_expired"
        log.warning("run %s on session %s: resumed (attempt %d, %s)",
                    run.id, run.session_id, record.attempt, reason)
        self.table.admit(run)
        self.table.active_by_session[run.session_id] = run
        run.log.append(RunResumed(record.attempt, record.last_sequence, reason))
        self.executor.start_task(run, agent, journal, resume_from=record)

    def _requeue(self, record: RunRecord) -> None:
        """A claimed queued run waits again behind its session's run."""
        run, journal = self.executor.revive(record)
        agent = self.agents.build(record.agent_config, version=record.agent_version)
        ahead = self.table.busiest(run.session_id)
        self.table.enqueue(run)
        self.table.admit(run)
        self.executor.start_task(run, agent, journal, predecessor=ahead)

    async def _interrupt(self, record: RunRecord) -> None:
        """End a claimed run as INTERRUPTED (resume policy `interrupt`)."""
        run, journal = self.executor.revive(record, journalled=False)
        response = AgentResponse(
            "", record.iterations, StopReason.INTERRUPTED, [], record.agent_config.get("model", ""),
            error="the run's server stopped and the resume policy is interrupt",
            usage=record.usage,
        )
        done = run.done_event(Done(response))
        try:
            await journal.finish(done, stop_reason=StopReason.INTERRUPTED.value, error=response.error,
                                 usage=record.usage, iterations=record.iterations, uptime_s=0.0)
        except PilothouseError as exc:
            log.warning("run %s: could not record it as interrupted: %s", run.id, exc.message)
        self.table.journals.pop(run.id, None)
        log.warning("run %s on session %s: interrupted (its server stopped)", run.id, run.session_id)
