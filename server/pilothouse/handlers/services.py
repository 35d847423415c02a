"""The gRPC servicers: thin translations between `pilothouse.v1` messages
and the `Runtime`. Every handler is wrapped by `handle_errors`, so domain
errors arrive as status codes with `google.rpc.ErrorInfo`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from pilothouse.adapters.forwarding import RunForwarder
from pilothouse.errors import InvalidArgumentError, NotFoundError
from pilothouse.handlers import convert
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.control import DisconnectPolicy, RunOptions
from pilothouse.runtime.events import StopReason
from pilothouse.runtime.runs import Run
from pilothouse.runtime.runtime import RunElsewhere, Runtime
from pilothouse.runtime.store.base import SessionState
from pilothouse.v1 import (
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    event_pb2,
    run_service_pb2 as runs_pb,
    run_service_pb2_grpc as runs_grpc,
    session_service_pb2 as sessions_pb,
    session_service_pb2_grpc as sessions_grpc,
)


class AgentService(agents_grpc.AgentServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @handle_errors
    async def CreateAgent(self, request, context):
        agent = await self.runtime.add_agent(convert.config_from_proto(request.config))
        return agents_pb.CreateAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def GetAgent(self, request, context):
        agent = await self.runtime.get_agent(request.name)
        return agents_pb.GetAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def ListAgents(self, request, context):
        agents, token = await self.runtime.list_agents(request.page_size, request.page_token)
        return agents_pb.ListAgentsResponse(
            agents=[convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    @handle_errors
    async def DeleteAgent(self, request, context):
        await self.runtime.delete_agent(request.name)
        return agents_pb.DeleteAgentResponse()


class SessionService(sessions_grpc.SessionServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _session(self, record):
        run = self.runtime.active_run(record.id)
        return convert.session_to_proto(record, run.id if run else "")

    @handle_errors
    async def CreateSession(self, request, context):
        record = await self.runtime.create_session(request.agent, request.created_by)
        return sessions_pb.CreateSessionResponse(session=self._session(record))

    @handle_errors
    async def GetOrCreateSession(self, request, context):
        record, created = await self.runtime.get_or_create_session(request.agent, request.created_by)
        return sessions_pb.GetOrCreateSessionResponse(session=self._session(record), created=created)

    @handle_errors
    async def GetSession(self, request, context):
        record = await self.runtime.get_session(request.session_id)
        return sessions_pb.GetSessionResponse(session=self._session(record))

    @handle_errors
    async def ListSessions(self, request, context):
        state = _state_filter(request.state)
        records, token = await self.runtime.list_sessions(
            request.agent, request.created_by, request.page_size, request.page_token, state
        )
        return sessions_pb.ListSessionsResponse(
            sessions=[self._session(r) for r in records], next_page_token=token
        )

    @handle_errors
    async def SearchSessions(self, request, context):
        state = _state_filter(request.state)
        found, token = await self.runtime.search_sessions(
            request.query, agent=request.agent, created_by=request.created_by, state=state,
            size=request.page_size, token=request.page_token,
        )  # fmt: skip
        return sessions_pb.SearchSessionsResponse(
            results=[convert.session_match_to_proto(m, self._session(m.session)) for m in found],
            next_page_token=token,
        )

    @handle_errors
    async def CloseSession(self, request, context):
        record = await self.runtime.close_session(request.session_id)
        return sessions_pb.CloseSessionResponse(session=self._session(record))

    @handle_errors
    async def ListMessages(self, request, context):
        messages, token = await self.runtime.list_messages(
            request.session_id, request.page_size, request.page_token,
            newest_first=request.newest_first,
        )
        return sessions_pb.ListMessagesResponse(
            messages=[convert.message_to_proto(m) for m in messages], next_page_token=token
        )

    @handle_errors
    async def DeleteSession(self, request, context):
        await self.runtime.delete_session(request.session_id)
        return sessions_pb.DeleteSessionResponse()

    @handle_errors
    async def CompactSession(self, request, context):
        summary, record = await self.runtime.compact_session(request.session_id)
        return sessions_pb.CompactSessionResponse(summary=summary, session=self._session(record))

    @handle_errors
    async def ExportSession(self, request, context):
        content = await self.runtime.export_session(request.session_id)
        return sessions_pb.ExportSessionResponse(content=content)

    @handle_errors
    async def ImportSession(self, request, context):
        record = await self.runtime.import_session(request.content)
        return sessions_pb.ImportSessionResponse(session=self._session(record))


class RunService(runs_grpc.RunServiceServicer):
    """A run outlives these RPCs: a cancelled or failed RPC only ends its
    subscription, unless the run was started with
    DISCONNECT_POLICY_CANCEL. Streams carry a heartbeat while the run is
    quiet. A call about a run another replica holds is forwarded there
    (`pilothouse.adapters.forwarding`)."""

    def __init__(
        self, runtime: Runtime, heartbeat_s: float = 15.0, forwarder: RunForwarder | None = None
    ) -> None:
        self.runtime = runtime
        self.heartbeat_s = heartbeat_s
        self.forwarder = forwarder
        self._cancellations: set[asyncio.Task[object]] = set()

    def _forward(self, context, where: RunElsewhere):
        """(stub, call kwargs) for the replica that holds the run."""
        if self.forwarder is None:
            raise NotFoundError(
                f"run {where.run_id} of session {where.session_id!r} is on another replica",
                reason="RUN_NOT_FOUND",
                metadata={"session_id": where.session_id, "run_id": where.run_id},
            )
        return self.forwarder.target(context, where)

    def _heartbeat(self, options: runs_pb.RunOptions) -> float:
        return convert.heartbeat_seconds(
            options.heartbeat_interval, self.heartbeat_s, "options.heartbeat_interval"
        )

    async def _start(self, start, field: str = "options") -> tuple[Run, RunOptions, bool]:
        """Start (or, with the STEER policy, steer) a run; the bool says
        whether this RPC started it."""
        options = convert.options_from_proto(start.options, field)
        run, created = await self.runtime.start_run(
            start.session_id, start.content, start.sender, options
        )
        return run, options, created

    def _on_disconnect(self, run: Run, options: RunOptions, owned: bool) -> None:
        """The RPC ended early: cancel the run if its policy says so."""
        if owned and not run.finished and options.on_disconnect is DisconnectPolicy.CANCEL:
            task = asyncio.ensure_future(
                self.runtime.cancel(run.session_id, run.id, "the client disconnected")
            )
            self._cancellations.add(task)
            task.add_done_callback(self._cancellations.discard)

    @handle_errors
    async def SendTo(self, request, context):
        try:
            run, options, owned = await self._start(request)
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            return await stub.SendTo(request, **kwargs)
        try:
            response = await run.wait()
        except asyncio.CancelledError:
            self._on_disconnect(run, options, owned)
            raise
        return runs_pb.SendToResponse(run_id=run.id, response=convert.response_to_proto(response))

    @handle_errors
    async def StreamTo(self, request, context):
        try:
            run, options, owned = await self._start(request)
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            async for response in stub.StreamTo(request, **kwargs):
                yield response
            return
        heartbeat = self._heartbeat(request.options)
        completed = False
        try:
            async for recorded in run.log.subscribe(0, heartbeat):
                yield runs_pb.StreamToResponse(event=convert.event_to_proto(recorded))
            completed = True
        finally:
            if not completed:
                self._on_disconnect(run, options, owned)

    @handle_errors
    async def Attach(self, request, context):
        try:
            run = await self.runtime.find_run(request.session_id, request.run_id)
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            forwarded = runs_pb.AttachRequest()
            forwarded.CopyFrom(request)
            forwarded.run_id = request.run_id or where.run_id
            async for response in stub.Attach(forwarded, **kwargs):
                yield response
            return
        heartbeat = convert.heartbeat_seconds(
            request.heartbeat_interval, self.heartbeat_s, "heartbeat_interval"
        )
        async for recorded in run.log.subscribe(request.after_sequence, heartbeat):
            yield runs_pb.AttachResponse(event=convert.event_to_proto(recorded))

    @handle_errors
    async def Steer(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        kind = first.WhichOneof("action") if first is not None else None
        if kind == "start":
            try:
                run, options, owned = await self._start(first.start, "start.options")
            except RunElsewhere as where:
                stub, kwargs = self._forward(context, where)
                async for response in stub.Steer(_prepend(first, request_iterator), **kwargs):
                    yield response
                return
            after, heartbeat = 0, self._heartbeat(first.start.options)
        elif kind == "attach":
            attach = first.attach
            try:
                run = await self.runtime.find_run(attach.session_id, attach.run_id)
            except RunElsewhere as where:
                stub, kwargs = self._forward(context, where)
                forwarded = runs_pb.SteerRequest()
                forwarded.CopyFrom(first)
                forwarded.attach.run_id = attach.run_id or where.run_id
                async for response in stub.Steer(_prepend(forwarded, request_iterator), **kwargs):
                    yield response
                return
            options, after, owned = run.options, attach.after_sequence, False
            heartbeat = convert.heartbeat_seconds(
                attach.heartbeat_interval, self.heartbeat_s, "attach.heartbeat_interval"
            )
            run.log.check_position(after)
        else:
            raise InvalidArgumentError.field("start", "the first request must be `start` or `attach`")
        completed = False
        try:
            async for event in _merge_commands(self.runtime, run, request_iterator, after, heartbeat):
                yield runs_pb.SteerResponse(event=event)
            completed = True
        finally:
            if not completed:
                self._on_disconnect(run, options, owned)

    @handle_errors
    async def SteerSession(self, request, context):
        try:
            run = await self.runtime.steer_session(
                request.session_id, request.content, request.sender
            )
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            return await stub.SteerSession(request, **kwargs)
        return runs_pb.SteerSessionResponse(run_id=run.id)

    @handle_errors
    async def Cancel(self, request, context):
        try:
            run, already = await self.runtime.cancel(
                request.session_id, request.run_id, request.reason
            )
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            return await stub.Cancel(request, **kwargs)
        assert run.response is not None
        return runs_pb.CancelResponse(
            run_id=run.id,
            already_finished=already,
            stop_reason=convert.stop_reason_to_proto(run.response.stop_reason),
        )

    @handle_errors
    async def SubmitDecision(self, request, context):
        try:
            run = await self.runtime.submit_decision(
                request.session_id, convert.decision_from_proto(request.decision)
            )
        except RunElsewhere as where:
            stub, kwargs = self._forward(context, where)
            return await stub.SubmitDecision(request, **kwargs)
        return runs_pb.SubmitDecisionResponse(run_id=run.id)


_END = object()


async def _prepend(first, rest: AsyncIterator) -> AsyncIterator:
    """`first`, then everything `rest` yields."""
    yield first
    async for item in rest:
        yield item


async def _merge_commands(
    runtime: Runtime,
    run: Run,
    requests: AsyncIterator[runs_pb.SteerRequest],
    after_sequence: int,
    heartbeat_s: float,
) -> AsyncIterator[event_pb2.AgentEvent]:
    """The run's events, while later requests (steer, cancel, decision) are
    applied as they arrive. A bad request ends the RPC with its error; the
    run goes on."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def forward() -> None:
        async for recorded in run.log.subscribe(after_sequence, heartbeat_s):
            queue.put_nowait(recorded)
        queue.put_nowait(_END)

    async def read() -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("action")
                if kind == "steer":
                    runtime.steer(run, request.steer.content, request.steer.sender)
                elif kind == "cancel":
                    run.control.request_stop(
                        StopReason.CANCELLED, request.cancel.reason or "cancelled by the client"
                    )
                elif kind == "decision":
                    run.control.decide(convert.decision_from_proto(request.decision))
                else:
                    raise InvalidArgumentError.field(
                        kind or "action", "after the first request: steer, cancel or decision"
                    )
        except grpc.aio.AioRpcError:
            return  # the client went away; the run goes on
        except Exception as exc:  # a bad request: delivered to the RPC
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(forward()), asyncio.create_task(read())]
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield convert.event_to_proto(item)  # type: ignore[arg-type]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _state_filter(value: int) -> SessionState | None:
    """The `state` filter of ListSessions and SearchSessions (None: any)."""
    state = convert.session_state_from_proto(value)
    if value and state is None:
        raise InvalidArgumentError.field("state", f"unknown value {value}")
    return state
