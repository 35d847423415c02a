"""The gRPC servicers: thin translations between `pilothouse.v1` messages
and the `Runtime`. Every handler is wrapped by `handle_errors`, so domain
errors arrive as status codes with `google.rpc.ErrorInfo`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from pilothouse.errors import InvalidArgumentError
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.runs import Run
from pilothouse.runtime.runtime import Runtime
from pilothouse.server import convert
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
        agent = self.runtime.add_agent(convert.config_from_proto(request.config))
        return agents_pb.CreateAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def GetAgent(self, request, context):
        agent = self.runtime.get_agent(request.name)
        return agents_pb.GetAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def ListAgents(self, request, context):
        agents, token = self.runtime.list_agents(request.page_size, request.page_token)
        return agents_pb.ListAgentsResponse(
            agents=[convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    @handle_errors
    async def DeleteAgent(self, request, context):
        self.runtime.delete_agent(request.name)
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
        records, token = await self.runtime.list_sessions(
            request.agent, request.created_by, request.page_size, request.page_token
        )
        return sessions_pb.ListSessionsResponse(
            sessions=[self._session(r) for r in records], next_page_token=token
        )

    @handle_errors
    async def CloseSession(self, request, context):
        record = await self.runtime.close_session(request.session_id)
        return sessions_pb.CloseSessionResponse(session=self._session(record))

    @handle_errors
    async def ListMessages(self, request, context):
        messages, token = await self.runtime.list_messages(
            request.session_id, request.page_size, request.page_token
        )
        return sessions_pb.ListMessagesResponse(
            messages=[convert.message_to_proto(m) for m in messages], next_page_token=token
        )


class RunService(runs_grpc.RunServiceServicer):
    """A run outlives these RPCs: a cancelled or failed RPC only stops its
    subscription to the run's event log."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @handle_errors
    async def SendTo(self, request, context):
        run, response = await self.runtime.send_to(request.session_id, request.content, request.sender)
        return runs_pb.SendToResponse(run_id=run.id, response=convert.response_to_proto(response))

    @handle_errors
    async def StreamTo(self, request, context):
        run = await self.runtime.start_run(request.session_id, request.content, request.sender)
        async for recorded in run.log.subscribe():
            yield runs_pb.StreamToResponse(event=convert.event_to_proto(recorded))

    @handle_errors
    async def Steer(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("action") != "start":
            raise InvalidArgumentError.field("start", "the first request must be `start`")
        start = first.start
        run = await self.runtime.start_run(start.session_id, start.content, start.sender)
        async for event in _merge_steering(self.runtime, run, request_iterator):
            yield runs_pb.SteerResponse(event=event)


_END = object()


async def _merge_steering(
    runtime: Runtime, run: Run, requests: AsyncIterator[runs_pb.SteerRequest]
) -> AsyncIterator[event_pb2.AgentEvent]:
    """The run's events, while later requests are applied as they arrive.
    A bad request ends the RPC with its error; the run goes on."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def forward() -> None:
        async for recorded in run.log.subscribe():
            queue.put_nowait(recorded)
        queue.put_nowait(_END)

    async def read() -> None:
        try:
            async for request in requests:
                if request.WhichOneof("action") != "steer":
                    raise InvalidArgumentError.field(
                        "steer", "after `start`, requests must be `steer`"
                    )
                runtime.steer(run, request.steer.content, request.steer.sender)
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
