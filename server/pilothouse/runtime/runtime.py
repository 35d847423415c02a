"""The runtime: one facade over the agent registry (`agents`), sessions
(`sessions`), the run scheduler (`scheduler`) and the routing of calls
about runs to where each run is (this process, the store, or another
replica).

Methods raise `PilothouseError` subclasses for bad input or wrong state;
see each docstring. Nothing here knows gRPC: a call about a run held by
another replica returns a `RemoteRun`, which the handler forwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection

from pilothouse.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    no_active_run,
    run_not_found,
)
from pilothouse.identity import Principal
from pilothouse.runtime import remote_agents, search
from pilothouse.runtime.agent import Agent, AgentConfig
from pilothouse.runtime.agents import AgentRegistry, require
from pilothouse.runtime.control import RunOptions
from pilothouse.runtime.delegation import Delegations
from pilothouse.runtime.events import AgentResponse, Decision, StopReason
from pilothouse.runtime.hookchain import NO_HOOKS, HookChain
from pilothouse.runtime.limits import ResumePolicy, RuntimeLimits, check_content
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.runmetrics import NO_METRICS, RunMetrics
from pilothouse.runtime.runs import Run, StoredRun
from pilothouse.runtime.runtable import RemoteRun, RunLocation
from pilothouse.runtime.scheduler import RunScheduler
from pilothouse.runtime.sessions import SessionLocks, Sessions, can_see
from pilothouse.runtime.store.base import (
    RunRecord,
    RunStatus,
    SessionMatch,
    SessionRecord,
    SessionState,
    SessionStore,
)
from pilothouse.runtime.subscriptions import EventFeed
from pilothouse.runtime.tools import ASK_USER, ToolCatalog, ToolDispatcher

log = logging.getLogger(__name__)

__all__ = [
    "RemoteRun",
    "ResumePolicy",
    "RunLocation",
    "Runtime",
    "RuntimeLimits",
]


class Runtime:
    """Agents, sessions and runs (see the module docstring)."""

    def __init__(
        self,
        *,
        model: ChatModel,
        default_model: str,
        dispatcher: ToolDispatcher,
        tools: ToolCatalog,
        store: SessionStore,
        limits: RuntimeLimits | None = None,
        hooks: HookChain | None = None,
        metrics: RunMetrics | None = None,
    ) -> None:
        if ASK_USER.name not in tools:
            tools.register(ASK_USER)
        self.model = model
        self.store = store
        self.tools = tools
        self.limits = limits or RuntimeLimits()
        self.agents = AgentRegistry(
            store, tools, default_model, check_model=getattr(model, "check_model", None),
            approval_exempt=self.limits.approval_exempt_tools,
        )
        locks = SessionLocks()
        self.sessions = Sessions(
            store, self.agents, model, locks, cache_size=self.limits.session_cache_size,
            local_run=lambda sid: run.id if (run := self.scheduler.active(sid)) else "",
            page_bytes=self.limits.page_bytes,
        )
        # Agents that call agents: `delegate` calls become child runs, the
        # rest goes to the ToolExecutors (see runtime.delegation).
        self.delegation = Delegations(
            self, dispatcher, max_depth=self.limits.delegation_max_depth,
            max_runs=self.limits.delegation_max_runs,
            remote=remote_agents.RemoteAgents() if remote_agents.available() else None,
        )
        self.scheduler = RunScheduler(
            model=model, dispatcher=self.delegation, store=store, agents=self.agents,
            sessions=self.sessions, locks=locks, limits=self.limits,
        )
        #: The hook plugins, called by the registry and the scheduler.
        self.hooks = hooks or NO_HOOKS
        self.agents.hooks = self.scheduler.hooks = self.hooks
        #: Where runs report their measurements (`pilothouse.app.metrics` in the server).
        self.scheduler.executor.metrics = metrics or NO_METRICS
        self.scheduler.on_run_end.append(self.delegation.run_ended)
        # Every run's events, for SubscribeEvents; this replica's writes wake it.
        self.feed = EventFeed(
            store, poll_s=self.limits.subscription_poll_s, buffer=self.limits.subscription_buffer
        )
        self.scheduler.writer.on_written = self.feed.wake

    # --- lifecycle ---------------------------------------------------------------

    @property
    def address(self) -> str:
        """This replica's gRPC address as other replicas reach it ("" in a
        single process that announces nothing)."""
        return self.scheduler.address

    @address.setter
    def address(self, value: str) -> None:
        self.scheduler.address = value

    @property
    def on_run_end(self) -> list[Callable[[Run, AgentResponse, float], None]]:
        return self.scheduler.on_run_end

    async def start(self) -> list[str]:
        """Take over the runs left by a crash or a handover (see
        `RunScheduler.start`); returns their ids."""
        taken = await self.scheduler.start()
        for run_id in taken:
            log.warning("run %s taken over at start", run_id)
        return taken

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    def begin_drain(self) -> None:
        self.scheduler.begin_drain()

    def active_runs(self) -> list[Run]:
        return self.scheduler.active_runs()

    async def wait_idle(self, timeout_s: float) -> bool:
        return await self.scheduler.wait_idle(timeout_s)

    async def hand_over(self, timeout_s: float = 30.0) -> int:
        return await self.scheduler.hand_over(timeout_s)

    async def shutdown(self, grace_s: float = 0.0) -> None:
        await self.scheduler.shutdown(grace_s)
        if self.delegation.remote is not None:
            await self.delegation.remote.aclose()

    @property
    def cached_sessions(self) -> int:
        return self.sessions.cached

    @property
    def background_idle(self) -> bool:
        return self.scheduler.background_idle

    # --- agents --------------------------------------------------------------------

    async def add_agent(
        self, config: AgentConfig, *, source: str = "api", replace: bool = False, creator: str = ""
    ) -> Agent:
        return await self.agents.add(config, source=source, replace=replace, creator=creator)

    async def stored_agent_config(self, name: str, field: str = "name") -> tuple[AgentConfig, int]:
        return await self.agents.stored(name, field)

    async def update_agent(self, config: AgentConfig, *, expected_version: int) -> Agent:
        return await self.agents.update(config, expected_version=expected_version)

    async def get_agent(self, name: str, field: str = "name", *, version: int = 0) -> Agent:
        return await self.agents.get(name, field, version=version)

    async def list_agent_versions(self, name: str, size: int, token: str) -> tuple[list[Agent], str]:
        return await self.agents.list_versions(name, size, token)

    async def list_agents(self, size: int, token: str) -> tuple[list[Agent], str]:
        return await self.agents.list_agents(size, token)

    async def delete_agent(self, name: str) -> None:
        await self.agents.delete(name)

    # --- sessions ------------------------------------------------------------------

    # A `caller` (the authenticated principal) sees only its own sessions
    # and their runs (every one for an admin); another's id is NOT_FOUND.
    # None is an internal call.

    async def create_session(
        self, agent: str, created_by: str, caller: Principal | None = None, *, agent_version: int = 0
    ) -> SessionRecord:
        return await self.sessions.create(agent, created_by, caller, agent_version=agent_version)

    async def update_session(
        self, session_id: str, caller: Principal | None = None, *, title: str | None = None,
        agent_version: int | None = None,
    ) -> SessionRecord:
        return await self.sessions.update(session_id, caller, title=title,
                                          agent_version=agent_version)

    async def rebind_session(
        self, session_id: str, agent_version: int, caller: Principal | None = None
    ) -> SessionRecord:
        return await self.sessions.rebind(session_id, agent_version, caller)

    async def get_or_create_session(
        self, agent: str, created_by: str, caller: Principal | None = None
    ) -> tuple[SessionRecord, bool]:
        return await self.sessions.get_or_create(agent, created_by, caller)

    async def get_session(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        return await self.sessions.get(session_id, caller)

    async def list_sessions(
        self, agent: str, created_by: str, size: int, token: str, state: SessionState | None = None,
        caller: Principal | None = None,
    ) -> tuple[list[SessionRecord], str]:
        return await self.sessions.list_sessions(agent, created_by, size, token, state, caller)

    async def close_session(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        return await self.sessions.close(session_id, caller)
    async def search_sessions(
        self,
        query: str,
        *,
        agent: str = "",
        created_by: str = "",
        state: SessionState | None = None,
        size: int = 0,
        token: str = "",
        caller: Principal | None = None,
    ) -> tuple[list[SessionMatch], str]:
        """A page of the sessions whose messages match `query`, best first
        (see `search.search_sessions`); a non-admin caller's own only."""
        if caller is not None and not caller.is_admin:
            created_by = caller.id
        return await search.search_sessions(
            self.store, query, agent=agent, created_by=created_by, state=state, size=size,
            token=token,
        )  # fmt: skip


    async def delete_session(self, session_id: str, caller: Principal | None = None) -> None:
        await self.sessions.delete(session_id, caller)

    async def list_messages(
        self, session_id: str, size: int, token: str, *, newest_first: bool = False,
        caller: Principal | None = None,
    ):
        return await self.sessions.list_messages(
            session_id, size, token, newest_first=newest_first, caller=caller
        )

    async def compact_session(
        self, session_id: str, caller: Principal | None = None
    ) -> tuple[str, SessionRecord]:
        return await self.sessions.compact(session_id, caller)

    async def export_session(
        self, session_id: str, caller: Principal | None = None, token: str = ""
    ) -> tuple[bytes, str]:
        return await self.sessions.export(session_id, caller, token)

    async def import_session(self, content: bytes, caller: Principal | None = None) -> SessionRecord:
        return await self.sessions.import_(content, caller)

    # --- runs ------------------------------------------------------------------------

    async def start_run(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        options: RunOptions | None = None,
        *,
        idempotency_key: str = "",
        caller: Principal | None = None,
    ) -> tuple[RunLocation, bool]:
        """Start a run (see `RunScheduler.start_run`); the bool says whether
        this call started it."""
        return await self.scheduler.start_run(
            session_id, content, sender, options, idempotency_key=idempotency_key,
            locate=self._where, caller=caller,
        )

    async def send_to(
        self, session_id: str, content: str, sender: str = "", options: RunOptions | None = None
    ) -> tuple[Run, AgentResponse]:
        """Start a run here and wait for its response."""
        where, _ = await self.start_run(session_id, content, sender, options)
        if not isinstance(where, Run):
            raise UnavailableError("the session's run is on another replica", reason="RUN_ELSEWHERE")
        return where, await where.result()

    def steer(self, run: Run, content: str, sender: str = "") -> None:
        """Queue steering content on a run. INVALID_ARGUMENT for empty or
        oversized content; FAILED_PRECONDITION (RUN_FINISHED) once the run
        has made its last model round."""
        check_content(content, self.limits.max_content_bytes)
        run.steer(content, sender)

    async def steer_session(
        self, session_id: str, content: str, sender: str = "", caller: Principal | None = None
    ) -> Run | RemoteRun:
        """Steer the session's active (or else next queued) run.
        FAILED_PRECONDITION (NO_ACTIVE_RUN) when there is none."""
        where = await self.locate(session_id, caller=caller)
        if isinstance(where, RemoteRun):
            return where
        if isinstance(where, StoredRun):
            raise _resuming(where)
        self.steer(where, content, sender)
        return where

    async def locate(
        self, session_id: str, run_id: str = "", caller: Principal | None = None
    ) -> RunLocation:
        """Where a run is: `run_id` of the session, else the session's
        active run (or its next queued one). NOT_FOUND (RUN_NOT_FOUND) for
        an unknown run id; FAILED_PRECONDITION (NO_ACTIVE_RUN) when no
        `run_id` is given and the session has no active run."""
        await self.sessions.get(session_id, caller)
        if run_id:
            local = self.scheduler.local(run_id)
            if local is not None and local.session_id == session_id:
                return local
            record = await self.store.get_run(run_id)
            if record is None or record.session_id != session_id:
                raise run_not_found(session_id, run_id)
            return await self._where(record)
        local = self.scheduler.current(session_id)
        if local is not None:
            return local
        latest = await self.store.latest_run(session_id)
        if latest is None or latest.status.ended:
            raise no_active_run(session_id)
        return await self._where(latest)

    async def _where(self, record: RunRecord) -> RunLocation:
        local = self.scheduler.local(record.id)
        if local is not None:
            return local
        if not record.status.ended and record.owner and record.owner != self.scheduler.owner:
            return RemoteRun(record.owner, record.session_id, record.id)
        return StoredRun(record, self.store)

    async def stored(self, location: RemoteRun) -> StoredRun:
        """A remote run read from the store instead (its owner does not
        answer: it is gone, and the run waits to be taken over)."""
        record = await self.store.get_run(location.run_id)
        if record is None:
            raise run_not_found(location.session_id, location.run_id)
        return StoredRun(record, self.store)

    async def find_run(self, session_id: str, run_id: str = "") -> Run | StoredRun:
        """A run of this process or the store (tests and tools); NOT_FOUND
        or FAILED_PRECONDITION as `locate`, UNAVAILABLE when another
        replica holds it."""
        where = await self.locate(session_id, run_id)
        if isinstance(where, RemoteRun):
            raise UnavailableError(f"run {where.run_id} is on {where.owner}", reason="RUN_ELSEWHERE")
        return where

    def active_run(self, session_id: str) -> Run | None:
        """The session's running run in this process, if any."""
        return self.scheduler.active(session_id)

    def queued_runs(self, session_id: str) -> list[Run]:
        return self.scheduler.queued(session_id)

    async def cancel(
        self, session_id: str, run_id: str = "", reason: str = "", caller: Principal | None = None
    ) -> tuple[Run | StoredRun, bool] | RemoteRun:
        """Cancel a run and wait until it has stopped and its history is
        stored. Returns (run, already_finished), or where to forward.
        Errors as `locate`; UNAVAILABLE (RUN_RESUMING) while the run waits
        to be taken over after its process stopped."""
        where = await self.locate(session_id, run_id, caller)
        if isinstance(where, RemoteRun):
            return where
        if isinstance(where, StoredRun):
            if where.record.status.ended:
                return where, True
            raise _resuming(where)
        if where.finished:
            return where, True
        where.stop(StopReason.CANCELLED, reason or "cancelled by the client")
        await where.wait()
        return where, False

    def decide(self, run: Run, decision: Decision) -> Run:
        """Answer a pending request of `run`, or of one of its delegations
        (a child run's request forwarded into its stream); the run that
        took it. NOT_FOUND (DECISION_NOT_PENDING) or INVALID_ARGUMENT as
        `Run.decide`."""
        if decision.request_id not in run.control.pending_requests():
            child = self.delegation.route_decision(run.session_id, decision)
            if child is not None:
                return child
        run.decide(decision)
        return run

    async def submit_decision(
        self, session_id: str, decision: Decision, caller: Principal | None = None
    ) -> Run | RemoteRun:
        """Answer a pending approval or question of the session's runs
        (only its principal, or an admin, may). NOT_FOUND
        (DECISION_NOT_PENDING) when none is waiting for it."""
        await self.sessions.get(session_id, caller)
        candidates = self.scheduler.session_runs(session_id)
        for run in candidates:
            if decision.request_id in run.control.pending_requests():
                run.decide(decision)
                return run
        child = self.delegation.route_decision(session_id, decision)  # a delegation's request
        if child is not None:
            return child
        if not candidates:
            latest = await self.store.latest_run(session_id)
            if latest is not None and not latest.status.ended:
                where = await self._where(latest)
                if isinstance(where, RemoteRun):
                    return where
                if isinstance(where, StoredRun):
                    raise _resuming(where)
        raise NotFoundError(
            f"session {session_id!r} has no pending request {decision.request_id!r}",
            reason="DECISION_NOT_PENDING",
            metadata={"session_id": session_id, "request_id": decision.request_id},
        )

    async def get_run(
        self, run_id: str, session_id: str = "", caller: Principal | None = None
    ) -> RunRecord:
        """A run's record (with the live sequence when it runs here).
        INVALID_ARGUMENT for an empty id; NOT_FOUND (RUN_NOT_FOUND) for an
        unknown run, one of another session than `session_id`, or one the
        caller may not see."""
        require(run_id, "run_id")
        record = await self.store.get_run(run_id)
        if record is None or (session_id and record.session_id != session_id):
            raise run_not_found(session_id, run_id)
        if caller is not None and not caller.is_admin:
            session = await self.store.get(record.session_id)
            if session is None or not can_see(caller, session):
                raise run_not_found(session_id, run_id)
        local = self.scheduler.local(run_id)
        if local is not None:
            record.last_sequence = max(record.last_sequence, local.log.last_sequence)
        return record

    async def list_runs(
        self, session_id: str, statuses: Collection[RunStatus], size: int, token: str,
        caller: Principal | None = None,
    ) -> tuple[list[RunRecord], str]:
        """A page of the session's runs, newest first, optionally only those
        in `statuses`."""
        limit = page_size(size, default=50)
        await self.sessions.get(session_id, caller)
        filters = {"session_id": session_id, "statuses": sorted(s.value for s in statuses)}
        before = _cursor(decode_token(token, "runs", filters))
        records = await self.store.list_runs(
            session_id, statuses=statuses, before=before, limit=limit + 1
        )
        more = len(records) > limit
        page = records[:limit]
        next_token = (
            encode_token("runs", f"{page[-1].created_at!r}|{page[-1].id}", filters)
            if more and page else ""
        )
        return page, next_token


def _cursor(position: object) -> tuple[float, str] | None:
    """(created_at, id) of a runs page token's position."""
    if position is None:
        return None
    try:
        assert isinstance(position, str)
        at, run_id = position.split("|", 1)
        created_at = float(at)
        assert math.isfinite(created_at) and run_id
        return created_at, run_id
    except (AssertionError, ValueError):
        raise InvalidArgumentError.field("page_token", "not a page token of runs") from None


def _resuming(where: StoredRun) -> UnavailableError:
    return UnavailableError(
        f"run {where.id} is waiting to be taken over after its server stopped; retry shortly",
        reason="RUN_RESUMING",
        metadata={"session_id": where.session_id, "run_id": where.id},
    )
