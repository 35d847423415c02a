"""`PilothouseClient`: every RPC of the runtime as an async method.

Methods return the protobuf messages of `pilothouse.v1`; `start_run` and
`get_run_handle` give a `RunHandle` with typed events. Failed calls raise
the `PilothouseError` subclass of their status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc

from pilothouse.client.connection import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, ClientTls, open_channel
from pilothouse.client.errors import (
    PilothouseError,
    PilothouseRpcError,
    error_from_rpc,
    translating as _translate,
)
from pilothouse.client.events import Event, event_from_proto
from pilothouse.client.run import DEFAULT_MAX_REATTACH, RunHandle, decision
from pilothouse.client.versions import AgentVersions
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    event_pb2,
    event_service_pb2 as events_pb,
    event_service_pb2_grpc as events_grpc,
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

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "PilothouseClient",
    "PilothouseError",
    "PilothouseRpcError",
    "SteerStream",
    "decision",
]


class SteerStream:
    """A `Steer` call: iterate it for the run's events; `send` steering
    content, `cancel_run`, `decide`; `done_writing` closes the client side
    (the run goes on)."""

    def __init__(self, call: _SteerCall) -> None:
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
        """Close the client side; events keep arriving until `done`."""
        await self._call.done_writing()

    def cancel(self) -> None:
        """Stop receiving; the run itself goes on."""
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[event_pb2.AgentEvent]:
        try:
            async for response in self._call:
                yield response.event
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def events(self) -> AsyncIterator[Event]:
        """The same events, typed (see `pilothouse.client.events`)."""
        async for raw in self:
            yield event_from_proto(raw)


_SteerCall = grpc.aio.StreamStreamCall[runs_pb.SteerRequest, runs_pb.SteerResponse]
_EventCall = (
    grpc.aio.UnaryStreamCall[runs_pb.StreamToRequest, runs_pb.StreamToResponse]
    | grpc.aio.UnaryStreamCall[runs_pb.AttachRequest, runs_pb.AttachResponse]
)


async def _events(call: _EventCall) -> AsyncIterator[event_pb2.AgentEvent]:
    try:
        async for response in call:
            yield response.event
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc
    finally:
        call.cancel()


class PilothouseClient(AgentVersions):
    """Client of one Pilothouse runtime. Pass `target` ("host:port") or an
    existing `channel`. Unary calls use `timeout` seconds unless told
    otherwise; errors raise the `PilothouseError` subclass of their status
    code (`NotFoundError`, `FailedPreconditionError`, ...)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        tls: bool | ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        """`interceptors` go on the channel this client creates: pass
        OpenTelemetry's aio client interceptors to make your span the
        parent of the run's trace. `tls` (True: the system roots; a
        ClientTls for a CA file and a client certificate) and `token` (a
        bearer token sent with every call) say how to connect; see
        `pilothouse.client.connection`."""
        self._owns_channel = channel is None
        self.target = target
        self.channel = channel or open_channel(
            target, tls=tls, token=token, interceptors=interceptors
        )
        self.timeout = timeout
        self.agents = agents_grpc.AgentServiceStub(self.channel)
        self.sessions = sessions_grpc.SessionServiceStub(self.channel)
        self.runs = runs_grpc.RunServiceStub(self.channel)
        self.event_service = events_grpc.EventServiceStub(self.channel)

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
        approval_policy: agent_pb2.ApprovalPolicy.ValueType = agent_pb2.APPROVAL_POLICY_UNSPECIFIED,
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
    async def get_agent(self, name: str, version: int = 0) -> agent_pb2.Agent:
        """Agent `name`: its latest version, or `version`."""
        reply = await self.agents.GetAgent(
            agents_pb.GetAgentRequest(name=name, version=version), timeout=self.timeout
        )
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
    async def create_session(
        self, agent: str, created_by: str = "", agent_version: int = 0
    ) -> session_pb2.Session:
        """A new session of `agent`, pinned to `agent_version` (0: each run
        uses the agent's latest version)."""
        reply = await self.sessions.CreateSession(
            sessions_pb.CreateSessionRequest(
                agent=agent, created_by=created_by, agent_version=agent_version
            ),
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
        """The session as JSON Lines (every page of a long session, joined)."""
        parts: list[bytes] = []
        token = ""
        while True:
            reply = await self.sessions.ExportSession(
                sessions_pb.ExportSessionRequest(session_id=session_id, page_token=token),
                timeout=self.timeout,
            )
            parts.append(reply.content)
            token = reply.next_page_token
            if not token:
                return b"".join(parts)

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

    async def subscribe_events(
        self,
        *,
        agents: Iterable[str] = (),
        session_ids: Iterable[str] = (),
        created_by: Iterable[str] = (),
        event_kinds: Iterable[str] = (),
        cursor: str = "",
        from_oldest: bool = False,
        heartbeat_interval: float | None = None,
    ) -> AsyncIterator[events_pb.SubscribeEventsResponse]:
        """Every run's events (`SubscribeEvents`), filtered, live, from the
        oldest kept or after `cursor`; each response has a `cursor` to
        resume after it. A subscriber too slow for the stream gets
        `ResourceExhaustedError` (reason SUBSCRIBER_TOO_SLOW) whose
        `metadata["cursor"]` is where to resume. `heartbeat_interval` in
        seconds (None: the server's)."""
        request = events_pb.SubscribeEventsRequest(
            agents=list(agents), session_ids=list(session_ids), created_by=list(created_by),
            event_kinds=list(event_kinds), cursor=cursor, from_oldest=from_oldest,
        )
        if heartbeat_interval is not None:
            request.heartbeat_interval.FromNanoseconds(int(heartbeat_interval * 1e9))
        call = self.event_service.SubscribeEvents(request)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def attach(
        self,
        session_id: str,
        run_id: str = "",
        after_sequence: int = 0,
        *,
        timeout: float | None = None,
        merge_deltas: bool = False,
    ) -> AsyncIterator[event_pb2.AgentEvent]:
        """A run's events after `after_sequence`, then live ones. With
        `merge_deltas`, text and thinking deltas that wait while this client
        falls behind arrive merged (sequences then skip; see
        `RunOptions.merge_deltas`, the same for `stream_to` and `steer`)."""
        call = self.runs.Attach(
            runs_pb.AttachRequest(
                session_id=session_id, run_id=run_id, after_sequence=after_sequence,
                merge_deltas=merge_deltas,
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
        merge_deltas: bool = False,
    ) -> SteerStream:
        """Attach a `Steer` call to a run that is already going
        (`merge_deltas` as for `attach`)."""
        call = self.runs.Steer(timeout=timeout)
        await call.write(
            runs_pb.SteerRequest(
                attach=runs_pb.AttachRun(
                    session_id=session_id, run_id=run_id, after_sequence=after_sequence,
                    merge_deltas=merge_deltas,
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
        self, session_id: str, statuses: Iterable[runs_pb.RunStatus.ValueType] = (),
        page_size: int = 0,
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

    # --- Run handles (typed) ----------------------------------------------

    async def start_run(
        self,
        session_id: str,
        content: str,
        sender: str = "",
        *,
        options: runs_pb.RunOptions | None = None,
        stream_timeout: float | None = None,
        max_reattach: int = DEFAULT_MAX_REATTACH,
    ) -> RunHandle:
        """Start a run with `StreamTo` and return its handle once the first
        event arrived (so `handle.run_id` is set). `stream_timeout` is the
        deadline of each stream call (None: none); a stream that is cut or
        times out is re-attached by sequence. Raises NotFoundError,
        InvalidArgumentError, FailedPreconditionError (a run already active:
        `metadata["active_run_id"]`) as `StreamTo` does."""
        call = self.runs.StreamTo(
            runs_pb.StreamToRequest(
                session_id=session_id, content=content, sender=sender, options=options
            ),
            timeout=stream_timeout,
        )
        handle = RunHandle(
            self, session_id, stream=call, stream_timeout=stream_timeout, max_reattach=max_reattach
        )
        await handle._first_event()
        return handle

    def get_run_handle(
        self,
        session_id: str,
        run_id: str = "",
        *,
        after: int = 0,
        stream_timeout: float | None = None,
        max_reattach: int = DEFAULT_MAX_REATTACH,
    ) -> RunHandle:
        """A handle on a run that is already going (or finished within the
        server's event retention): `run_id` "" means the session's active
        run. Its `events()` start after sequence `after`."""
        return RunHandle(
            self, session_id, run_id, after=after, stream_timeout=stream_timeout,
            max_reattach=max_reattach,
        )
