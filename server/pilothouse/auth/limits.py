"""Limits per principal: concurrent runs, runs per minute, sessions created
per minute and content bytes per minute (user and steering messages).

Rates are token buckets holding a minute's worth (a burst of the whole
limit, then the limit per minute). A call over a limit is
RESOURCE_EXHAUSTED with `RetryInfo` (when to try again) and `QuotaFailure`
(subject `principal:<id>`, the limit's name), and an audit line. The
counts live in each replica's memory: with N replicas behind a load
balancer a principal gets up to N times the limits.

`LimitsInterceptor` applies them to the runtime's RPCs (it comes after
the authentication interceptor and reads `current_principal()`). A run
holds its concurrency slot until the runtime reports its end
(`Runtime.on_run_end` → `PrincipalLimiter.run_ended`), even when the
client that started it has gone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from grpc.experimental import wrap_server_method_handler

from pilothouse.auth.audit import audit
from pilothouse.auth.principal import ANONYMOUS, Principal, current_principal
from pilothouse.errors import QuotaExceededError
from pilothouse.rpc.errors import status_of
from pilothouse.v1 import run_service_pb2 as runs_pb

#: Suggested wait when the concurrency limit is reached, seconds.
CONCURRENCY_RETRY_S = 1.0
#: Ended run ids remembered for runs whose stream binds late.
_ENDED_KEPT = 2_000
#: Principals with buckets before full (idle) buckets are dropped.
_PRUNE_ABOVE = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Per principal; 0 means no limit."""

    concurrent_runs: int = 0
    runs_per_minute: int = 0
    sessions_per_minute: int = 0
    content_bytes_per_minute: int = 0

    @property
    def enabled(self) -> bool:
        return any(
            (self.concurrent_runs, self.runs_per_minute, self.sessions_per_minute,
             self.content_bytes_per_minute)
        )


class TokenBucket:
    """`capacity` tokens, refilled at `capacity` per minute."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.tokens = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` tokens are there (0: now; inf: never, the
        cost is over the capacity)."""
        self._refill(now)
        if cost > self.capacity:
            return math.inf
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, cost: float) -> None:
        self.tokens -= cost

    def give(self, cost: float) -> None:
        self.tokens = min(self.capacity, self.tokens + cost)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


class RunDirectory(Protocol):
    """What the limiter asks the runtime about runs."""

    def is_local(self, run_id: str) -> bool:
        """Whether the run is active or queued in this process."""
        ...

    def active_run_id(self, session_id: str) -> str | None:
        """The id of the session's active run here, if any."""
        ...


class RunSlot:
    """A principal's concurrency slot, held from admission until its run
    ends (or the call fails before starting one)."""

    __slots__ = ("_limiter", "principal", "released", "run_id")

    def __init__(self, limiter: PrincipalLimiter, principal: str) -> None:
        self._limiter = limiter
        self.principal = principal
        self.run_id = ""
        self.released = False

    def bind(self, run_id: str) -> None:
        """Tie the slot to the run the call started; released at once when
        that run has ended already, is another call's, or runs on another
        replica."""
        if self.run_id or self.released or not run_id:
            return
        self._limiter._bind(self, run_id)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limiter._release(self)

    def release_unless_bound(self) -> None:
        if not self.run_id:
            self.release()


class PrincipalLimiter:
    """The counts behind `Limits`, in this process."""

    def __init__(
        self,
        limits: Limits,
        runs: RunDirectory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.runs = runs
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._active: dict[str, int] = {}
        self._bound: dict[str, RunSlot] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    # --- rates -------------------------------------------------------------

    def _bucket(self, principal: str, kind: str, capacity: int, now: float) -> TokenBucket:
        key = (principal, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > _PRUNE_ABOVE:
                for old in [k for k, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[old]
            bucket = self._buckets[key] = TokenBucket(capacity, now)
        return bucket

    def _exceeded(self, principal: str, limit: str, retry_s: float, what: str) -> QuotaExceededError:
        return QuotaExceededError(
            f"{what}; retry in {retry_s:.1f}s" if math.isfinite(retry_s) else what,
            retry_after_s=retry_s if math.isfinite(retry_s) else 60.0,
            subject=f"principal:{principal}",
            limit=limit,
            metadata={"limit": limit},
        )

    def _charges(self, principal: str, runs: int, sessions: int, content: int):
        """The (bucket, cost) pairs a call needs; raises QuotaExceededError
        when one cannot pay now (nothing is taken then)."""
        now = self._clock()
        wanted = [
            ("runs_per_minute", self.limits.runs_per_minute, runs, "too many runs per minute"),
            ("sessions_per_minute", self.limits.sessions_per_minute, sessions,
             "too many sessions created per minute"),
            ("content_bytes_per_minute", self.limits.content_bytes_per_minute, content,
             "too much content per minute"),
        ]
        charges = []
        for limit, capacity, cost, what in wanted:
            if not capacity or not cost:
                continue
            bucket = self._bucket(principal, limit, capacity, now)
            wait = bucket.wait_for(cost, now)
            if wait > 0:
                raise self._exceeded(principal, limit, wait, what)
            charges.append((bucket, cost))
        return charges

    def charge(self, principal: str, *, sessions: int = 0, content: int = 0) -> Callable[[], None]:
        """Take `sessions` creations and `content` bytes; returns a refund.
        Raises QuotaExceededError."""
        charges = self._charges(principal, 0, sessions, content)
        for bucket, cost in charges:
            bucket.take(cost)

        def refund() -> None:
            for bucket, cost in charges:
                bucket.give(cost)

        return refund

    # --- runs --------------------------------------------------------------

    def admit_run(self, principal: str, content: int = 0) -> RunSlot:
        """A slot for a new run with `content` bytes. Raises
        QuotaExceededError (concurrent runs, runs per minute, content)."""
        limit = self.limits.concurrent_runs
        if limit and self._active.get(principal, 0) >= limit:
            raise self._exceeded(
                principal, "concurrent_runs", CONCURRENCY_RETRY_S, "too many concurrent runs"
            )
        for bucket, cost in self._charges(principal, 1, 0, content):
            bucket.take(cost)
        self._active[principal] = self._active.get(principal, 0) + 1
        return RunSlot(self, principal)

    def active(self, principal: str) -> int:
        return self._active.get(principal, 0)

    def _bind(self, slot: RunSlot, run_id: str) -> None:
        local = self.runs.is_local(run_id) if self.runs is not None else True
        if run_id in self._ended or run_id in self._bound or not local:
            slot.release()
            return
        slot.run_id = run_id
        self._bound[run_id] = slot

    def _release(self, slot: RunSlot) -> None:
        if slot.run_id:
            self._bound.pop(slot.run_id, None)
        left = self._active.get(slot.principal, 0) - 1
        if left > 0:
            self._active[slot.principal] = left
        else:
            self._active.pop(slot.principal, None)

    def run_ended(self, run_id: str) -> None:
        """The runtime's report that a run ended (`on_run_end`)."""
        slot = self._bound.pop(run_id, None)
        if slot is not None:
            slot.release()
            return
        self._ended[run_id] = None
        if len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)

    def bind_session_run(self, slot: RunSlot, session_id: str) -> None:
        """Bind `slot` to the session's active run here (a unary call whose
        client left before the response named the run)."""
        if self.runs is not None:
            run_id = self.runs.active_run_id(session_id)
            if run_id:
                slot.bind(run_id)


def _size(text: str) -> int:
    return len(text.encode()) if text else 0


def _principal_id() -> str:
    principal: Principal = current_principal() or ANONYMOUS
    return principal.id


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
#: A unary-unary handler behavior, as grpc.aio calls it.
_Unary: TypeAlias = Callable[[_Request, _Context], Awaitable[_Response]]
#: What a behavior wrapper is given: the behavior and the full method name.
_Wrapper: TypeAlias = Callable[[Any, str], Any]

_RUNS = "/pilothouse.v1.RunService/"
_SESSIONS = "/pilothouse.v1.SessionService/"


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Applies a PrincipalLimiter to the runtime's RPCs: SendTo, StreamTo
    and Steer's `start` (a run with its content), Steer's `steer` and
    SteerSession (content), CreateSession, GetOrCreateSession (refunded
    when it found an existing session) and ImportSession (a session).
    Other methods pass untouched."""

    def __init__(self, limiter: PrincipalLimiter, server: str = "") -> None:
        self.limiter = limiter
        self.server = server
        self._wrappers: dict[str, _Wrapper] = {
            _RUNS + "SendTo": self._send_to,
            _RUNS + "StreamTo": self._stream_to,
            _RUNS + "Steer": self._steer,
            _RUNS + "SteerSession": self._steer_session,
            _SESSIONS + "CreateSession": self._create_session,
            _SESSIONS + "GetOrCreateSession": self._create_session,
            _SESSIONS + "ImportSession": self._create_session,
        }

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        wrapper = self._wrappers.get(handler_call_details.method)
        if handler is None or wrapper is None:
            return handler
        method = handler_call_details.method
        return wrap_server_method_handler(lambda behavior: wrapper(behavior, method), handler)

    def _audit(self, context: _Context, method: str, error: QuotaExceededError) -> None:
        audit(
            "call.refused", current_principal(), server=self.server, method=method,
            peer=context.peer(), code="RESOURCE_EXHAUSTED", reason=error.reason,
            detail=f"{error.limit}: {error.message}",
        )

    async def _refuse(self, context: _Context, method: str, error: QuotaExceededError) -> None:
        self._audit(context, method, error)
        await context.abort_with_status(status_of(error))

    def _admit_run(self, content: str) -> RunSlot:
        return self.limiter.admit_run(_principal_id(), _size(content))

    def _send_to(
        self, behavior: _Unary[runs_pb.SendToRequest, runs_pb.SendToResponse], method: str
    ) -> _Unary[runs_pb.SendToRequest, runs_pb.SendToResponse]:
        async def limited(
            request: runs_pb.SendToRequest, context: _Context
        ) -> runs_pb.SendToResponse:
            try:
                slot = self._admit_run(request.content)
            except QuotaExceededError as error:
                await self._refuse(context, method, error)
                raise
            try:
                response = await behavior(request, context)
                slot.bind(response.run_id)
                return response
            except asyncio.CancelledError:
                # The client left; the run may go on: it keeps the slot.
                self.limiter.bind_session_run(slot, request.session_id)
                raise
            finally:
                slot.release_unless_bound()

        return limited

    def _stream_to(
        self,
        behavior: Callable[
            [runs_pb.StreamToRequest, _Context], AsyncIterator[runs_pb.StreamToResponse]
        ],
        method: str,
    ) -> Callable[[runs_pb.StreamToRequest, _Context], AsyncIterator[runs_pb.StreamToResponse]]:
        async def limited(
            request: runs_pb.StreamToRequest, context: _Context
        ) -> AsyncIterator[runs_pb.StreamToResponse]:
            try:
                slot = self._admit_run(request.content)
            except QuotaExceededError as error:
                await self._refuse(context, method, error)
                raise
            try:
                async for response in behavior(request, context):
                    if not slot.run_id:
                        slot.bind(response.event.run_id)
                    yield response
            finally:
                slot.release_unless_bound()

        return limited

    def _steer(
        self,
        behavior: Callable[
            [AsyncIterator[runs_pb.SteerRequest], _Context], AsyncIterator[runs_pb.SteerResponse]
        ],
        method: str,
    ) -> Callable[
        [AsyncIterator[runs_pb.SteerRequest], _Context], AsyncIterator[runs_pb.SteerResponse]
    ]:
        async def limited(
            requests: AsyncIterator[runs_pb.SteerRequest], context: _Context
        ) -> AsyncIterator[runs_pb.SteerResponse]:
            slots: list[RunSlot] = []

            async def counted() -> AsyncIterator[runs_pb.SteerRequest]:
                # A refusal raised here reaches the handler, which ends
                # the call with it (the run, if any, goes on).
                first = True
                async for request in requests:
                    kind = request.WhichOneof("action")
                    try:
                        if first and kind == "start":
                            slots.append(self._admit_run(request.start.content))
                        elif kind == "steer":
                            self.limiter.charge(
                                _principal_id(), content=_size(request.steer.content)
                            )
                    except QuotaExceededError as error:
                        self._audit(context, method, error)
                        raise
                    first = False
                    yield request

            try:
                async for response in behavior(counted(), context):
                    for slot in slots:
                        if not slot.run_id:
                            slot.bind(response.event.run_id)
                    yield response
            finally:
                for slot in slots:
                    slot.release_unless_bound()

        return limited

    def _steer_session(
        self,
        behavior: _Unary[runs_pb.SteerSessionRequest, runs_pb.SteerSessionResponse],
        method: str,
    ) -> _Unary[runs_pb.SteerSessionRequest, runs_pb.SteerSessionResponse]:
        async def limited(
            request: runs_pb.SteerSessionRequest, context: _Context
        ) -> runs_pb.SteerSessionResponse:
            try:
                self.limiter.charge(_principal_id(), content=_size(request.content))
            except QuotaExceededError as error:
                await self._refuse(context, method, error)
                raise
            return await behavior(request, context)

        return limited

    def _create_session(
        self, behavior: _Unary[_Request, _Response], method: str
    ) -> _Unary[_Request, _Response]:
        """CreateSession, GetOrCreateSession (refunded unless the response
        says `created`) and ImportSession."""

        async def limited(request: _Request, context: _Context) -> _Response:
            try:
                refund = self.limiter.charge(_principal_id(), sessions=1)
            except QuotaExceededError as error:
                await self._refuse(context, method, error)
                raise
            response: Any = None
            try:
                response = await behavior(request, context)
                return response
            finally:
                created = getattr(response, "created", True) if response is not None else False
                if not created:
                    refund()

        return limited

