"""RunService over gRPC.

A run outlives these RPCs: a cancelled or failed RPC only ends its
subscription, unless the run was started with DISCONNECT_POLICY_CANCEL.
Streams carry a heartbeat while the run is quiet. The runtime says where
a run is; a run another replica holds is forwarded there
(`pilothouse.adapters.forwarding`), and a stream whose owner does not
answer is served from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from pilothouse.adapters.forwarding import RunForwarder
from pilothouse.auth.principal import current_principal
from pilothouse.errors import InvalidArgumentError, NotFoundError, UnavailableError
from pilothouse.handlers import convert
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.control import DisconnectPolicy, RunOptions
from pilothouse.runtime.eventlog import merge_deltas_at
from pilothouse.runtime.events import RunEvent, StopReason
from pilothouse.runtime.runs import Run, StoredRun
from pilothouse.runtime.runtime import RemoteRun, RunLocation, Runtime
from pilothouse.v1 import (
    event_pb2,
    run_service_pb2 as runs_pb,
    run_service_pb2_grpc as runs_grpc,
)

Context = grpc.aio.ServicerContext
#: A streaming response that carries one event.
R = TypeVar("R", runs_pb.StreamToResponse, runs_pb.AttachResponse)
#: Longest idempotency key, in characters.
MAX_IDEMPOTENCY_KEY = 128


def idempotency_key(value: str, field: str = "idempotency_key") -> str:
    """INVALID_ARGUMENT for a key that is too long or not printable."""
    if len(value) > MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise InvalidArgumentError.field(
            field, f"must be at most {MAX_IDEMPOTENCY_KEY} printable characters"
        )
    return value


class RunService(runs_grpc.RunServiceServicer):
    """See the module docstring."""

    def __init__(
        self, runtime: Runtime, heartbeat_s: float = 15.0, forwarder: RunForwarder | None = None
    ) -> None:
        self.runtime = runtime
        self.heartbeat_s = heartbeat_s
        self.forwarder = forwarder
        self._cancellations: set[asyncio.Task[object]] = set()

    # --- helpers ---------------------------------------------------------------

    def _peer(
        self, context: Context, where: RemoteRun
    ) -> tuple[runs_grpc.RunServiceAsyncStub, dict[str, Any]]:
        """The stub and call options that forward a call to `where.owner`."""
        if self.forwarder is None:
            raise NotFoundError(
                f"run {where.run_id} of session {where.session_id!r} is on another replica",
                reason="RUN_NOT_FOUND",
                metadata={"session_id": where.session_id, "run_id": where.run_id},
            )
        return self.forwarder.target(context, where)

    def _heartbeat(self, duration, field: str) -> float:
        return convert.heartbeat_seconds(duration, self.heartbeat_s, field)

    async def _start(self, start: Any, field: str = "options") -> tuple[RunLocation, RunOptions, bool]:
        """Start (or, with the STEER policy or a used idempotency key,
        join) a run; the bool says whether this RPC started it."""
        options = convert.options_from_proto(start.options, field)
        key_field = "start.idempotency_key" if field.startswith("start") else "idempotency_key"
        key = idempotency_key(start.idempotency_key, key_field)
        where, created = await self.runtime.start_run(
            start.session_id, start.content, start.sender, options, idempotency_key=key,
            caller=current_principal(),
        )
        return where, options, created

    def _on_disconnect(self, run: RunLocation, options: RunOptions, owned: bool) -> None:
        """The RPC ended early: cancel the run if its policy says so."""
        if (isinstance(run, Run) and owned and not run.finished
                and options.on_disconnect is DisconnectPolicy.CANCEL):
            task = asyncio.ensure_future(
                self.runtime.cancel(run.session_id, run.id, "the client disconnected")
            )
            self._cancellations.add(task)
            task.add_done_callback(self._cancellations.discard)

    async def _remote_events(
        self, context: Context, where: RemoteRun, after: int, heartbeat_s: float,
        merge_deltas: bool,
    ) -> AsyncIterator[event_pb2.AgentEvent]:
        """A remote run's events through its owner; from the store when
        the owner does not answer (it is gone: the run waits for a
        takeover, and the store shows its progress)."""
        stub, kwargs = self._peer(context, where)
        request = runs_pb.AttachRequest(
            session_id=where.session_id, run_id=where.run_id, after_sequence=after,
            merge_deltas=merge_deltas,
        )
        request.heartbeat_interval.FromNanoseconds(int(heartbeat_s * 1e9))
        sent = after
        try:
            async for response in stub.Attach(request, **kwargs):
                if not response.event.HasField("heartbeat"):
                    sent = response.event.sequence
                yield response.event
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
        stored = await self.runtime.stored(where)
        async for recorded in stored.events(sent, heartbeat_s):
            yield convert.event_to_proto(recorded)

    async def _events(
        self, context: Context, where: RunLocation, after: int, heartbeat_s: float,
        response: type[R], merge_deltas: bool,
    ) -> AsyncIterator[R]:
        """The run's events as `response` messages (their `event` field set)."""
        if isinstance(where, RemoteRun):
            async for event in self._remote_events(context, where, after, heartbeat_s, merge_deltas):
                yield response(event=event)
            return
        async for recorded in where.events(after, heartbeat_s, merge_deltas=merge_deltas):
            message = response()
            convert.fill_event(message.event, recorded)
            yield message

    # --- RPCs ------------------------------------------------------------------

    @handle_errors
    async def SendTo(self, request: runs_pb.SendToRequest, context: Context) -> runs_pb.SendToResponse:
        where, options, owned = await self._start(request)
        if isinstance(where, RemoteRun):
            stub, kwargs = self._peer(context, where)
            return await stub.SendTo(request, **kwargs)
        if request.return_immediately:
            record = await self.runtime.get_run(where.id)
            return runs_pb.SendToResponse(run_id=where.id, run=convert.run_to_proto(record))
        try:
            response = await where.result()
        except asyncio.CancelledError:
            self._on_disconnect(where, options, owned)
            raise
        record = await self.runtime.get_run(where.id)
        return runs_pb.SendToResponse(
            run_id=where.id, response=convert.response_to_proto(response),
            run=convert.run_to_proto(record),
        )

    @handle_errors
    async def StreamTo(
        self, request: runs_pb.StreamToRequest, context: Context
    ) -> AsyncIterator[runs_pb.StreamToResponse]:
        where, options, owned = await self._start(request)
        if isinstance(where, RemoteRun):
            stub, kwargs = self._peer(context, where)
            async for response in stub.StreamTo(request, **kwargs):
                yield response
            return
        heartbeat = self._heartbeat(request.options.heartbeat_interval, "options.heartbeat_interval")
        completed = False
        try:
            async for response in self._events(context, where, 0, heartbeat,
                                               runs_pb.StreamToResponse,
                                               request.options.merge_deltas):
                yield response
            completed = True
        finally:
            if not completed:
                self._on_disconnect(where, options, owned)

    @handle_errors
    async def Attach(
        self, request: runs_pb.AttachRequest, context: Context
    ) -> AsyncIterator[runs_pb.AttachResponse]:
        where = await self.runtime.locate(request.session_id, request.run_id, current_principal())
        heartbeat = self._heartbeat(request.heartbeat_interval, "heartbeat_interval")
        if not isinstance(where, RemoteRun):
            where.check_position(request.after_sequence)
        async for response in self._events(context, where, request.after_sequence, heartbeat,
                                           runs_pb.AttachResponse, request.merge_deltas):
            yield response

    @handle_errors
    async def Steer(
        self, request_iterator: AsyncIterator[runs_pb.SteerRequest], context: Context
    ) -> AsyncIterator[runs_pb.SteerResponse]:
        first = await anext(aiter(request_iterator), None)
        kind = first.WhichOneof("action") if first is not None else None
        if kind == "start":
            assert first is not None
            where, options, owned = await self._start(first.start, "start.options")
            after = 0
            heartbeat = self._heartbeat(first.start.options.heartbeat_interval,
                                        "start.options.heartbeat_interval")
            merge = first.start.options.merge_deltas
        elif kind == "attach":
            assert first is not None
            attach = first.attach
            where = await self.runtime.locate(attach.session_id, attach.run_id, current_principal())
            options, after, owned = RunOptions(), attach.after_sequence, False
            heartbeat = self._heartbeat(attach.heartbeat_interval, "attach.heartbeat_interval")
            merge = attach.merge_deltas
            if not isinstance(where, RemoteRun):
                where.check_position(after)
        else:
            raise InvalidArgumentError.field("start", "the first request must be `start` or `attach`")
        assert first is not None
        if isinstance(where, RemoteRun):
            stub, kwargs = self._peer(context, where)
            forwarded = runs_pb.SteerRequest()
            forwarded.CopyFrom(first)
            if kind == "attach":
                forwarded.attach.run_id = where.run_id
            async for response in stub.Steer(_prepend(forwarded, request_iterator), **kwargs):
                yield response
            return
        completed = False
        try:
            async for event in _merge_commands(self.runtime, where, request_iterator, after,
                                               heartbeat, merge):
                yield runs_pb.SteerResponse(event=event)
            completed = True
        finally:
            if not completed:
                self._on_disconnect(where, options, owned)

    @handle_errors
    async def SteerSession(
        self, request: runs_pb.SteerSessionRequest, context: Context
    ) -> runs_pb.SteerSessionResponse:
        where = await self.runtime.steer_session(
            request.session_id, request.content, request.sender, current_principal()
        )
        if isinstance(where, RemoteRun):
            stub, kwargs = self._peer(context, where)
            return await stub.SteerSession(request, **kwargs)
        return runs_pb.SteerSessionResponse(run_id=where.id)

    @handle_errors
    async def Cancel(self, request: runs_pb.CancelRequest, context: Context) -> runs_pb.CancelResponse:
        outcome = await self.runtime.cancel(
            request.session_id, request.run_id, request.reason, current_principal()
        )
        if isinstance(outcome, RemoteRun):
            stub, kwargs = self._peer(context, outcome)
            return await stub.Cancel(request, **kwargs)
        run, already = outcome
        if isinstance(run, StoredRun):
            stop = convert.stop_reason_value_to_proto(run.record.stop_reason)
        else:
            response = run.response
            if response is None:  # handed over while we waited: ask again
                raise UnavailableError(
                    f"run {run.id} moved to another replica; retry", reason="RUN_HANDED_OVER"
                )
            stop = convert.stop_reason_to_proto(response.stop_reason)
        return runs_pb.CancelResponse(run_id=run.id, already_finished=already, stop_reason=stop)

    @handle_errors
    async def SubmitDecision(
        self, request: runs_pb.SubmitDecisionRequest, context: Context
    ) -> runs_pb.SubmitDecisionResponse:
        where = await self.runtime.submit_decision(
            request.session_id, convert.decision_from_proto(request.decision), current_principal()
        )
        if isinstance(where, RemoteRun):
            stub, kwargs = self._peer(context, where)
            return await stub.SubmitDecision(request, **kwargs)
        return runs_pb.SubmitDecisionResponse(run_id=where.id)

    @handle_errors
    async def GetRun(self, request: runs_pb.GetRunRequest, context: Context) -> runs_pb.GetRunResponse:
        record = await self.runtime.get_run(request.run_id, request.session_id, current_principal())
        return runs_pb.GetRunResponse(run=convert.run_to_proto(record))

    @handle_errors
    async def ListRuns(
        self, request: runs_pb.ListRunsRequest, context: Context
    ) -> runs_pb.ListRunsResponse:
        statuses = convert.run_statuses_from_proto(request.statuses)
        records, token = await self.runtime.list_runs(
            request.session_id, statuses, request.page_size, request.page_token,
            current_principal(),
        )
        return runs_pb.ListRunsResponse(
            runs=[convert.run_to_proto(r) for r in records], next_page_token=token
        )


_END = object()


async def _prepend(first: runs_pb.SteerRequest, rest: AsyncIterator[runs_pb.SteerRequest]):
    """`first`, then everything `rest` yields."""
    yield first
    async for item in rest:
        yield item


async def _merge_commands(
    runtime: Runtime,
    run: Run | StoredRun,
    requests: AsyncIterator[runs_pb.SteerRequest],
    after_sequence: int,
    heartbeat_s: float,
    merge_deltas: bool = False,
) -> AsyncIterator[event_pb2.AgentEvent]:
    """The run's events, while later requests (steer, cancel, decision) are
    applied as they arrive. A bad request ends the RPC with its error; the
    run goes on. With `merge_deltas`, deltas that wait in the queue when the
    RPC writes are merged (`merge_deltas_at`)."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def forward() -> None:
        try:
            async for recorded in run.events(after_sequence, heartbeat_s):  # merged below
                queue.put_nowait(recorded)
            queue.put_nowait(_END)
        except Exception as exc:  # a handover or expired events: to the RPC
            queue.put_nowait(exc)

    async def read() -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("action")
                if kind not in ("steer", "cancel", "decision"):
                    raise InvalidArgumentError.field(
                        kind or "action", "after the first request: steer, cancel or decision"
                    )
                if not isinstance(run, Run):
                    raise UnavailableError(
                        f"run {run.id} is not running on a replica now; retry shortly",
                        reason="RUN_RESUMING",
                    )
                if kind == "steer":
                    runtime.steer(run, request.steer.content, request.steer.sender)
                elif kind == "cancel":
                    run.stop(StopReason.CANCELLED, request.cancel.reason or "cancelled by the client")
                else:
                    runtime.decide(run, convert.decision_from_proto(request.decision))
        except grpc.aio.AioRpcError:
            return  # the client went away; the run goes on
        except Exception as exc:  # a bad request: delivered to the RPC
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(forward()), asyncio.create_task(read())]
    backlog: list[object] = []
    try:
        while True:
            if not backlog:
                backlog.append(await queue.get())
                while merge_deltas and not queue.empty():  # behind the run: take what waits
                    backlog.append(queue.get_nowait())
            end = 0
            while end < len(backlog) and isinstance(backlog[end], RunEvent):
                end += 1
            if end:
                events: list[RunEvent] = backlog[:end]  # type: ignore[assignment]
                del backlog[:end]
                index = 0
                while index < len(events):
                    if merge_deltas:
                        event, index = merge_deltas_at(events, index)
                    else:
                        event, index = events[index], index + 1
                    yield convert.event_to_proto(event)
                continue
            item = backlog.pop(0)
            if item is _END:
                return
            assert isinstance(item, BaseException)
            raise item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
