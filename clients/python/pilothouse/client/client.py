"""The async client (see the package docstring)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc

from pilothouse.rpc.errors import error_details
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    event_pb2,
    message_pb2,
    run_service_pb2 as runs_pb,
    run_service_pb2_grpc as runs_grpc,
    session_pb2,
    session_service_pb2 as sessions_pb,
    session_service_pb2_grpc as sessions_grpc,
)

P = ParamSpec("P")
T = TypeVar("T")

#: Default deadline of unary calls, seconds. Streams have none by default:
#: a run takes as long as it takes.
DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class PilothouseRpcError(Exception):
    """A failed call: `code` (grpc.StatusCode), `message`, and from
    `google.rpc.ErrorInfo` the `reason` and `metadata`; `field_violations`
    lists (field, description) from `BadRequest`."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        info, bad = error_details(error)
        self.code: grpc.StatusCode = error.code()
        self.message: str = error.details() or ""
        self.reason = info.reason if info else ""
        self.metadata = dict(info.metadata) if info else {}
        self.field_violations = (
            [(v.field, v.description) for v in bad.field_violations] if bad else []
        )
        super().__init__(f"{self.code.name}: {self.message}")


def _translate(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise PilothouseRpcError(exc) from exc

    return wrapper


def decision(
    request_id: str,
    verdict: int = event_pb2.VERDICT_UNSPECIFIED,
    *,
    reason: str = "",
    selected_options: Iterable[str] = (),
    text: str = "",
) -> event_pb2.Decision:
    """A `Decision`: `verdict` (event_pb2.VERDICT_APPROVE, _DENY,
    _APPROVE_ALWAYS) for an approval; `selected_options` or `text` for a
    question."""
    return event_pb2.Decision(
        request_id=request_id,
        verdict=verdict,
        reason=reason,
        selected_options=list(selected_options),
        text=text,
    )


class SteerStream:
    """A `Steer` call: iterate it for the run's events; `send` steering
    content, `cancel_run`, `decide`; `done_writing` closes the client side
    (the run goes on)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def send(self, content: str, sender: str = "") -> None:
        await self._call.write(
            runs_pb.SteerRequest(steer=runs_pb.SteerInput(content=content, sender=sender))
        )

    async def cancel_run(self, reason: str = "") -> None:
        """Ask the run to stop; its `done` (CANCELLED) still arrives."""
        await self._call.write(runs_pb.SteerRequest(cancel=runs_pb.CancelRun(reason=reason)))

    async def decide(self, answer: event_pb2.Decision) -> None:
        """Answer an approval or a question (see `decision`)."""
        await self._call.write(runs_pb.SteerRequest(decision=answer))

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        """Stop receiving; the run itself goes on."""
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[event_pb2.AgentEvent]:
        try:
            async for response in self._call:
                yield response.event
        except grpc.aio.AioRpcError as exc:
            raise PilothouseRpcError(exc) from exc


async def _events(call: Any) -> AsyncIterator[event_pb2.AgentEvent]:
    try:
        async for response in call:
            yield response.event
    except grpc.aio.AioRpcError as exc:
        raise PilothouseRpcError(exc) from exc
    finally:
        call.cancel()


class PilothouseClient:
    """Client of one Pilothouse runtime. Pass `target` ("host:port") or an
    existing `channel`. Unary calls use `timeout` seconds unless told
    otherwise; errors raise `PilothouseRpcError`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        """`interceptors` go on the channel this client creates: pass
        OpenTelemetry's aio client interceptors to make your span the
        parent of the run's trace."""
        self._owns_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=list(interceptors) or None
        )
        self.timeout = timeout
        self.agents = agents_grpc.AgentServiceStub(self.channel)
        self.sessions = sessions_grpc.SessionServiceStub(self.channel)
        self.runs = runs_grpc.RunServiceStub(self.channel)

    async def __aenter__(self) -> PilothouseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    @staticmethod
    async def _all_pages(call: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
        """Follow `next_page_token` until the last page; `field` names the
        repeated field of the response."""
        items: list[Any] = []
        token = ""
        while True:
            reply = await call(token)
            items.extend(getattr(reply, field))
            token = reply.next_page_token
            if not token:
                return items

    # --- Agents -----------------------------------------------------------

    @_translate
    async def create_agent(
        self,
        name: str,
        *,
        description: str = "",
        system_prompt: str = "",
        model: str = "",
        tools: Iterable[str] = (),
        max_iterations: int = 0,
        tool_choice: str = "",
        thinking: bool = False,
        compact_threshold: int = 0,
        approval_policy: int = agent_pb2.APPROVAL_POLICY_UNSPECIFIED,
        approval_required_tools: Iterable[str] = (),
        context_window: int = 0,
        **settings: Any,
    ) -> agent_pb2.Agent:
        """Register an agent (see `pilothouse.v1.AgentConfig` for the fields;
        `settings` are further AgentConfig fields, e.g. `fallback_model`,
        `temperature`)."""
        config = agent_pb2.AgentConfig(
            name=name,
            description=description,
            system_prompt=system_prompt,
            model=model,
            tools=list(tools),
            max_iterations=max_iterations,
            tool_choice=tool_choice,
            thinking=thinking,
            compact_threshold=compact_threshold,
            approval_policy=approval_policy,
            approval_required_tools=list(approval_required_tools),
            context_window=context_window,
            **settings,
        )
        reply = await self.agents.CreateAgent(
            agents_pb.CreateAgentRequest(config=config), timeout=self.timeout
        )
        return reply.agent

    @_translate
    async def get_agent(self, name: str) -> agent_pb2.Agent:
        reply = await self.agents.GetAgent(agents_pb.GetAgentRequest(name=name), timeout=self.timeout)
        return reply.agent

    @_translate
    async def list_agents(self, page_size: int = 0) -> list[agent_pb2.Agent]:
        """Every agent, alphabetically (follows the pages)."""
        return await self._all_pages(
            lambda token: self.agents.ListAgents(
                agents_pb.ListAgentsRequest(page_size=page_size, page_token=token),
                timeout=self.timeout,
            ),
            "agents",
        )

    @_translate
    async def delete_agent(self, name: str) -> None:
        await self.agents.DeleteAgent(agents_pb.DeleteAgentRequest(name=name), timeout=self.timeout)

    # --- Sessions ---------------------------------------------------------

    @_translate
    async def create_session(self, agent: str, created_by: str = "") -> session_pb2.Session:
        reply = await self.sessions.CreateSession(
            sessions_pb.CreateSessionRequest(agent=agent, created_by=created_by),
            timeout=self.timeout,
        )
        return reply.session

    @_translate
    async def get_or_create_session(self, agent: str, created_by: str = "") -> session_pb2.Session:
        reply = await self.sessions.GetOrCreateSession(
            sessions_pb.GetOrCreateSessionRequest(agent=agent, created_by=created_by),
            timeout=self.timeout,
        )
        return reply.session

    @_translate
    async def get_session(self, session_id: str) -> session_pb2.Session:
        reply = await self.sessions.GetSession(
            sessions_pb.GetSessionRequest(session_id=session_id), timeout=self.timeout
        )
        return reply.session

    @_translate
    async def list_sessions(
        self, agent: str = "", created_by: str = "", page_size: int = 0
    ) -> list[session_pb2.Session]:
        """Every matching session, newest first (follows the pages)."""
        return await self._all_pages(
            lambda token: self.sessions.ListSessions(
                sessions_pb.ListSessionsRequest(
                    agent=agent, created_by=created_by, page_size=page_size, page_token=token
                ),
                timeout=self.timeout,
            ),
            "sessions",
        )

    @_translate
    async def close_session(self, session_id: str) -> session_pb2.Session:
        reply = await self.sessions.CloseSession(
            sessions_pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout
        )
        return reply.session

    @_translate
    async def delete_session(self, session_id: str) -> None:
        await self.sessions.DeleteSession(
            sessions_pb.DeleteSessionRequest(session_id=session_id), timeout=self.timeout
        )

    @_translate
    async def compact_session(self, session_id: str) -> sessions_pb.CompactSessionResponse:
        return await self.sessions.CompactSession(
            sessions_pb.CompactSessionRequest(session_id=session_id), timeout=self.timeout
        )

    @_translate
    async def export_session(self, session_id: str) -> bytes:
        """The session as JSON Lines."""
        reply = await self.sessions.ExportSession(
            sessions_pb.ExportSessionRequest(session_id=session_id), timeout=self.timeout
        )
        return reply.content

    @_translate
    async def import_session(self, content: bytes) -> session_pb2.Session:
        """Import an exported session as a new session."""
        reply = await self.sessions.ImportSession(
            sessions_pb.ImportSessionRequest(content=content), timeout=self.timeout
        )
        return reply.session

    @_translate
    async def list_messages(self, session_id: str, page_size: int = 0) -> list[message_pb2.Message]:
        """A session's whole history, oldest first (follows the pages)."""
        return await self._all_pages(
            lambda token: self.sessions.ListMessages(
                sessions_pb.ListMessagesRequest(
                    session_id=session_id, page_size=page_size, page_token=token
                ),
                timeout=self.timeout,
            ),
            "messages",
        )

    # --- Runs -------------------------------------------------------------

    @_translate
    async def send_to(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        *,
        options: runs_pb.RunOptions | None = None,
        timeout: float | None = None,
        idempotency_key: str = "",
        return_immediately: bool = False,
    ) -> runs_pb.SendToResponse:
        """Run to completion (or, with `return_immediately`, start it and
        return its record); `timeout` seconds (None: no deadline). A retry
        with the same `idempotency_key` joins the first call's run."""
        return await self.runs.SendTo(
            runs_pb.SendToRequest(
                session_id=session_id, content=content, sender=sender, options=options,
                idempotency_key=idempotency_key, return_immediately=return_immediately,
            ),
            timeout=timeout,
        )

    async def stream_to(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        *,
        options: runs_pb.RunOptions | None = None,
        timeout: float | None = None,
        idempotency_key: str = "",
    ) -> AsyncIterator[event_pb2.AgentEvent]:
        """The run's events, the last one `done`."""
        call = self.runs.StreamTo(
            runs_pb.StreamToRequest(
                session_id=session_id, content=content, sender=sender, options=options,
                idempotency_key=idempotency_key,
            ),
            timeout=timeout,
        )
        async for event in _events(call):
            yield event

    async def attach(
        self,
        session_id: str,
        run_id: str = "",
        after_sequence: int = 0,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[event_pb2.AgentEvent]:
        """A run's events after `after_sequence`, then live ones."""
        call = self.runs.Attach(
            runs_pb.AttachRequest(
                session_id=session_id, run_id=run_id, after_sequence=after_sequence
            ),
            timeout=timeout,
        )
        async for event in _events(call):
            yield event

    async def steer(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        *,
        options: runs_pb.RunOptions | None = None,
        timeout: float | None = None,
        idempotency_key: str = "",
    ) -> SteerStream:
        """Start a run with a `Steer` call and return it."""
        call = self.runs.Steer(timeout=timeout)
        await call.write(
            runs_pb.SteerRequest(
                start=runs_pb.StartRun(
                    session_id=session_id, content=content, sender=sender, options=options,
                    idempotency_key=idempotency_key,
                )
            )
        )
        return SteerStream(call)

    async def steer_attach(
        self,
        session_id: str,
        run_id: str = "",
        after_sequence: int = 0,
        *,
        timeout: float | None = None,
    ) -> SteerStream:
        """Attach a `Steer` call to a run that is already going."""
        call = self.runs.Steer(timeout=timeout)
        await call.write(
            runs_pb.SteerRequest(
                attach=runs_pb.AttachRun(
                    session_id=session_id, run_id=run_id, after_sequence=after_sequence
                )
            )
        )
        return SteerStream(call)

    @_translate
    async def steer_session(self, session_id: str, content: str, sender: str = "") -> str:
        """Steer the session's active run; returns its id."""
        reply = await self.runs.SteerSession(
            runs_pb.SteerSessionRequest(session_id=session_id, content=content, sender=sender),
            timeout=self.timeout,
        )
        return reply.run_id

    @_translate
    async def cancel(
        self, session_id: str, run_id: str = "", reason: str = "", *, timeout: float | None = None
    ) -> runs_pb.CancelResponse:
        """Cancel a run; returns once it has stopped."""
        return await self.runs.Cancel(
            runs_pb.CancelRequest(session_id=session_id, run_id=run_id, reason=reason),
            timeout=timeout or self.timeout,
        )

    @_translate
    async def submit_decision(self, session_id: str, answer: event_pb2.Decision) -> str:
        """Answer an approval or a question; returns the run's id."""
        reply = await self.runs.SubmitDecision(
            runs_pb.SubmitDecisionRequest(session_id=session_id, decision=answer),
            timeout=self.timeout,
        )
        return reply.run_id

    @_translate
    async def get_run(self, run_id: str, session_id: str = "") -> runs_pb.Run:
        """A run's record."""
        reply = await self.runs.GetRun(
            runs_pb.GetRunRequest(run_id=run_id, session_id=session_id), timeout=self.timeout
        )
        return reply.run

    @_translate
    async def list_runs(
        self, session_id: str, statuses: Iterable[int] = (), page_size: int = 0
    ) -> list[runs_pb.Run]:
        """A session's runs, newest first (follows the pages)."""
        return await self._all_pages(
            lambda token: self.runs.ListRuns(
                runs_pb.ListRunsRequest(
                    session_id=session_id, statuses=list(statuses), page_size=page_size,
                    page_token=token,
                ),
                timeout=self.timeout,
            ),
            "runs",
        )
