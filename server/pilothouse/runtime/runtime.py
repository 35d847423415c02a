"""The runtime: agent registry, sessions and runs (seed 000 `Runtime`).

Agents are immutable values in a registry listed alphabetically. Sessions
live in the store; the runtime keeps loaded histories in memory. A session
has at most one active run; a run's history is stored append-only before
its `Done` is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import SpanKind, Status, StatusCode

from pilothouse.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PilothouseError,
)
from pilothouse.runtime.agent import Agent, AgentConfig
from pilothouse.runtime.events import AgentResponse, Done, RunStarted, StopReason
from pilothouse.runtime.loop import run_agent
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.runs import Run
from pilothouse.runtime.store.base import RunOutcome, SessionRecord, SessionState, SessionStore
from pilothouse.runtime.tools import ToolContext, ToolDispatcher, ToolRegistry

log = logging.getLogger(__name__)
tracer = trace.get_tracer("pilothouse.runtime")

#: Default limit on one user or steering message, in bytes of UTF-8.
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024


def _session_not_found(session_id: str) -> NotFoundError:
    return NotFoundError(
        f"session {session_id!r} not found",
        reason="SESSION_NOT_FOUND",
        metadata={"session_id": session_id},
    )


def _agent_not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"agent {name!r} not found", reason="AGENT_NOT_FOUND", metadata={"agent": name}
    )


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgumentError.field(field, "must not be empty")


def valid_prefix(history: list[Message], start: int) -> list[Message]:
    """`history` cut so that every assistant tool call after `start` has its
    tool results: an interrupted round is dropped whole."""
    end = len(history)
    index = start
    while index < end:
        message = history[index]
        if message.role is Role.ASSISTANT and message.tool_calls:
            needed = {c.id for c in message.tool_calls}
            answered = set()
            cursor = index + 1
            while cursor < end and history[cursor].role is Role.TOOL:
                answered.add(history[cursor].tool_call_id)
                cursor += 1
            if not needed <= answered:
                return history[:index]
            index = cursor
        else:
            index += 1
    return history


class Runtime:
    """Agents, sessions and runs. Every method raises `PilothouseError`
    subclasses for bad input or wrong state; see each docstring."""

    def __init__(
        self,
        *,
        model: ChatModel,
        default_model: str,
        dispatcher: ToolDispatcher,
        tools: ToolRegistry,
        store: SessionStore,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
    ) -> None:
        self.model = model
        self.default_model = default_model
        self.dispatcher = dispatcher
        self.tools = tools
        self.store = store
        self.max_content_bytes = max_content_bytes
        self._agents: dict[str, Agent] = {}
        self._histories: dict[str, list[Message]] = {}
        self._active: dict[str, Run] = {}
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._identity_lock = asyncio.Lock()

    # --- Agents -----------------------------------------------------------

    def add_agent(self, config: AgentConfig, *, source: str = "api") -> Agent:
        """Register an agent (seed `add_agent`). ALREADY_EXISTS for a taken
        name; FAILED_PRECONDITION when a tool it names is not registered."""
        if config.name in self._agents:
            raise AlreadyExistsError(
                f"agent {config.name!r} already exists",
                reason="AGENT_EXISTS",
                metadata={"agent": config.name},
            )
        missing = self.tools.missing(config.tools)
        if missing:
            raise FailedPreconditionError(
                f"agent {config.name!r} names tools no ToolExecutor offers: {', '.join(missing)}",
                reason="TOOL_NOT_AVAILABLE",
                metadata={"agent": config.name, "tools": ",".join(missing)},
            )
        if not config.model:
            config = config.model_copy(update={"model": self.default_model})
        agent = Agent(config, self.tools.snapshot(config.tools), source=source)
        self._agents[config.name] = agent
        log.info("agent %s registered (%s, model %s)", config.name, source, config.model)
        return agent

    def get_agent(self, name: str, field: str = "name") -> Agent:
        """The agent; INVALID_ARGUMENT for an empty name, NOT_FOUND if unknown."""
        _require(name, field)
        agent = self._agents.get(name)
        if agent is None:
            raise _agent_not_found(name)
        return agent

    def list_agents(self, size: int, token: str) -> tuple[list[Agent], str]:
        """A page of agents in alphabetical order and the next page token."""
        limit = page_size(size, default=50)
        after = decode_token(token, "agents") or ""
        names = sorted(n for n in self._agents if n > after)
        page = [self._agents[n] for n in names[:limit]]
        more = len(names) > limit
        return page, encode_token("agents", page[-1].name) if more and page else ""

    def delete_agent(self, name: str) -> None:
        _require(name, "name")
        if self._agents.pop(name, None) is None:
            raise _agent_not_found(name)

    # --- Sessions ---------------------------------------------------------

    async def create_session(self, agent: str, created_by: str) -> SessionRecord:
        """Open a new session. NOT_FOUND for an unknown agent."""
        self.get_agent(agent, "agent")
        now = time.time()
        record = SessionRecord(uuid.uuid4().hex, agent, created_by, now, now)
        await self.store.create(record)
        self._histories[record.id] = []
        return record

    async def get_or_create_session(self, agent: str, created_by: str) -> tuple[SessionRecord, bool]:
        """The open session of (agent, created_by), or a new one (seed
        `get_or_create_session`); the bool says whether it was created."""
        self.get_agent(agent, "agent")
        async with self._identity_lock:
            existing = await self.store.find_open(agent, created_by)
            if existing is not None:
                return existing, False
            return await self.create_session(agent, created_by), True

    async def get_session(self, session_id: str) -> SessionRecord:
        _require(session_id, "session_id")
        record = await self.store.get(session_id)
        if record is None:
            raise _session_not_found(session_id)
        return record

    def active_run(self, session_id: str) -> Run | None:
        return self._active.get(session_id)

    async def list_sessions(
        self, agent: str, created_by: str, size: int, token: str
    ) -> tuple[list[SessionRecord], str]:
        limit = page_size(size, default=50)
        filters = {"agent": agent, "created_by": created_by}
        offset = decode_token(token, "sessions", filters) or 0
        records = await self.store.list(
            agent=agent, created_by=created_by, state=None, offset=offset, limit=limit + 1
        )
        more = len(records) > limit
        next_token = encode_token("sessions", offset + limit, filters) if more else ""
        return records[:limit], next_token

    async def close_session(self, session_id: str) -> SessionRecord:
        """Close a session (idempotent). FAILED_PRECONDITION while a run is
        active."""
        record = await self.get_session(session_id)
        run = self._active.get(session_id)
        if run is not None:
            raise FailedPreconditionError(
                f"session {session_id!r} has an active run {run.id}",
                reason="RUN_ACTIVE",
                metadata={"session_id": session_id, "active_run_id": run.id},
            )
        if record.state is SessionState.CLOSED:
            return record
        self._histories.pop(session_id, None)
        return await self.store.set_state(session_id, SessionState.CLOSED, time.time())

    async def list_messages(self, session_id: str, size: int, token: str) -> tuple[list[Message], str]:
        limit = page_size(size, default=100)
        await self.get_session(session_id)
        filters = {"session_id": session_id}
        offset = decode_token(token, "messages", filters) or 0
        messages = await self.store.list_messages(session_id, offset, limit + 1)
        more = len(messages) > limit
        return messages[:limit], encode_token("messages", offset + limit, filters) if more else ""

    async def _history(self, session_id: str) -> list[Message]:
        history = self._histories.get(session_id)
        if history is None:
            history = await self.store.load_history(session_id)
            self._histories[session_id] = history
        return history

    # --- Runs -------------------------------------------------------------

    def _check_content(self, content: str, field: str = "content") -> None:
        if not content.strip():
            raise InvalidArgumentError.field(field, "must not be empty")
        size = len(content.encode())
        if size > self.max_content_bytes:
            raise InvalidArgumentError.field(
                field, f"is {size} bytes, over the limit of {self.max_content_bytes}"
            )

    async def start_run(self, session_id: str, content: str, sender: str = "") -> Run:
        """Start a run for a user message and return at once.

        INVALID_ARGUMENT: empty or oversized content. NOT_FOUND: unknown
        session or agent. FAILED_PRECONDITION: the session is closed or has
        an active run (ErrorInfo metadata `active_run_id`)."""
        self._check_content(content)
        record = await self.get_session(session_id)
        if record.state is SessionState.CLOSED:
            raise FailedPreconditionError(
                f"session {session_id!r} is closed",
                reason="SESSION_CLOSED",
                metadata={"session_id": session_id},
            )
        agent = self.get_agent(record.agent)
        lock = self._session_locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            active = self._active.get(session_id)
            if active is not None:
                raise FailedPreconditionError(
                    f"session {session_id!r} already has an active run {active.id}",
                    reason="RUN_ACTIVE",
                    metadata={"session_id": session_id, "active_run_id": active.id},
                )
            history = await self._history(session_id)
            run = Run(uuid.uuid4().hex, session_id, agent.name, sender)
            await self.store.begin_run(session_id, run.id, lease_s=3600.0, now=time.time())
            self._active[session_id] = run
        run.task = asyncio.create_task(
            self._execute(run, agent, history, content, sender), name=f"run-{run.id}"
        )
        return run

    async def send_to(self, session_id: str, content: str, sender: str = "") -> tuple[Run, AgentResponse]:
        """Start a run and wait for its response (seed `send_to`)."""
        run = await self.start_run(session_id, content, sender)
        return run, await run.wait()

    def steer(self, run: Run, content: str, sender: str = "") -> None:
        """Queue steering content on a run (INVALID_ARGUMENT for empty or
        oversized content, FAILED_PRECONDITION once it has finished)."""
        self._check_content(content)
        run.steer(content, sender)

    async def _execute(
        self, run: Run, agent: Agent, stored: list[Message], content: str, sender: str
    ) -> None:
        started = time.monotonic()
        history = list(stored)
        pre_run_len = len(history)
        history.append(Message.user(content, sender))
        run.log.append(RunStarted(agent.name, agent.config.model, content, sender))
        done: Done | None = None
        context = ToolContext(agent.name, sender, run.session_id, run.id)
        with tracer.start_as_current_span(
            f"{gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value} {agent.name}",
            kind=SpanKind.INTERNAL,
        ) as span:
            span.set_attribute(
                gen_ai.GEN_AI_OPERATION_NAME, gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value
            )
            span.set_attribute(gen_ai.GEN_AI_AGENT_NAME, agent.name)
            span.set_attribute(gen_ai.GEN_AI_CONVERSATION_ID, run.session_id)
            span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, agent.config.model)
            span.set_attribute("pilothouse.run.id", run.id)
            try:
                async for event in run_agent(
                    agent, self.model, self.dispatcher, history, context, run.steering
                ):
                    if isinstance(event, Done):
                        done = event  # held back until the history is stored
                    else:
                        run.log.append(event)
            except asyncio.CancelledError:
                done = Done(
                    AgentResponse("", 0, StopReason.CANCELLED, [], agent.config.model)
                )
                await asyncio.shield(self._finish(run, history, pre_run_len, started, done))
                raise
            except Exception as exc:  # a bug: still end the run cleanly
                log.exception("run %s failed", run.id)
                done = Done(
                    AgentResponse(
                        "", 0, StopReason.ERROR, [], agent.config.model,
                        error=f"internal error: {type(exc).__name__}",
                    )
                )
            assert done is not None
            span.set_attribute("pilothouse.run.stop_reason", done.response.stop_reason.value)
            if done.response.stop_reason is StopReason.ERROR:
                span.set_status(Status(StatusCode.ERROR, done.response.error))
            await self._finish(run, history, pre_run_len, started, done)

    async def _finish(
        self, run: Run, history: list[Message], pre_run_len: int, started: float, done: Done
    ) -> None:
        """Store the run's new messages (append-only, only whole rounds),
        then publish `Done` and release the session."""
        kept = valid_prefix(history, pre_run_len)
        new_messages = kept[pre_run_len:]
        try:
            await self.store.finish_run(
                run.session_id,
                run.id,
                RunOutcome(
                    messages=new_messages,
                    stop_reason=done.response.stop_reason.value,
                    usage=done.response.usage,
                    uptime_s=time.monotonic() - started,
                    finished_at=time.time(),
                ),
            )
            cached = self._histories.get(run.session_id)
            if cached is not None:
                cached.extend(new_messages)
        except PilothouseError as exc:
            log.error("run %s: storing history failed: %s", run.id, exc.message)
            done = Done(
                dataclasses.replace(
                    done.response,
                    stop_reason=StopReason.ERROR,
                    error=f"storing the session history failed: {exc.message}",
                )
            )
        finally:
            if self._active.get(run.session_id) is run:
                del self._active[run.session_id]
            run.finish(done)
        r = done.response
        log.info(
            "run %s on session %s ended: %s after %d rounds (%d prompt + %d completion tokens)",
            run.id, run.session_id, r.stop_reason.value, r.iterations,
            r.usage.prompt_tokens, r.usage.completion_tokens,
        )

    async def shutdown(self, runs: Iterable[Run] | None = None) -> None:
        """Cancel active runs (their history stays valid) and close the store."""
        for run in list(runs if runs is not None else self._active.values()):
            if run.task is not None and not run.task.done():
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
        await self.store.close()
