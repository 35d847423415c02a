"""`RunHandle`: one run, followed by sequence across cut streams.

A run lives apart from the RPC that follows it. Streams end without `done`
for reasons that are not the run's: a proxy's idle or stream timeout
(INTERNAL, "RST_STREAM"), the server's `max_connection_age` or a replica
draining (UNAVAILABLE), the stream's own deadline (DEADLINE_EXCEEDED). The
handle then calls `Attach` with `after_sequence` = the last sequence it
delivered, so every event arrives once, in order, without a gap.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Literal

import grpc

from pilothouse.client.errors import UnavailableError, error_from_rpc
from pilothouse.client.events import Done, Event, event_from_proto
from pilothouse.v1 import event_pb2, run_service_pb2 as runs_pb

if TYPE_CHECKING:
    from pilothouse.client.client import PilothouseClient

#: Consecutive re-attach attempts without a new event before giving up.
DEFAULT_MAX_REATTACH = 8
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0

_EventCall = (
    grpc.aio.UnaryStreamCall[runs_pb.StreamToRequest, runs_pb.StreamToResponse]
    | grpc.aio.UnaryStreamCall[runs_pb.AttachRequest, runs_pb.AttachResponse]
)
_EVENT_RESPONSES = (runs_pb.StreamToResponse, runs_pb.AttachResponse)
VerdictName = Literal["approve", "deny", "always"]
_VERDICTS: dict[str, event_pb2.Verdict.ValueType] = {
    "approve": event_pb2.VERDICT_APPROVE,
    "deny": event_pb2.VERDICT_DENY,
    "always": event_pb2.VERDICT_APPROVE_ALWAYS,
}


def is_stream_cut(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed stream was cut under a run that may still be going:
    UNAVAILABLE, DEADLINE_EXCEEDED, or INTERNAL from an HTTP/2 stream reset
    (how proxies end streams they time out)."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    return code is grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")


def decision(
    request_id: str,
    verdict: event_pb2.Verdict.ValueType = event_pb2.VERDICT_UNSPECIFIED,
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


class RunHandle:
    """A run of a session: its events, its result, and control over it.

    Made by `PilothouseClient.start_run` (which waits for the run's first
    event, so `run_id` is known) or `PilothouseClient.get_run_handle`.

    Attributes:
        session_id: the session.
        run_id: the run ("" until the first event of a handle made without one).
        last_sequence: the highest sequence delivered so far (0: none).
    """

    def __init__(
        self,
        client: PilothouseClient,
        session_id: str,
        run_id: str = "",
        *,
        stream: _EventCall | None = None,
        after: int = 0,
        stream_timeout: float | None = None,
        max_reattach: int = DEFAULT_MAX_REATTACH,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.run_id = run_id
        self.last_sequence = after
        self._start = after
        self._stream = stream
        self._pending: list[event_pb2.AgentEvent] = []
        self._stream_timeout = stream_timeout
        self._max_reattach = max_reattach
        self._done: Done | None = None
        #: Re-attaches made (each is an Attach call after a cut stream).
        self.reattach_count = 0

    async def _first_event(self) -> None:
        """Read the start stream's first event, so `run_id` is known."""
        assert self._stream is not None
        try:
            response = await self._stream.read()
        except grpc.aio.AioRpcError as exc:
            self._stream.cancel()
            raise error_from_rpc(exc) from exc
        if not isinstance(response, _EVENT_RESPONSES):  # grpc.aio.EOF
            raise UnavailableError(message="the run's stream ended before its first event")
        self._pending.append(response.event)
        self.run_id = response.event.run_id

    @property
    def done(self) -> Done | None:
        """The run's `done` event once an iteration saw it."""
        return self._done

    def _open(self, cursor: int) -> tuple[list[event_pb2.AgentEvent], _EventCall]:
        """The start stream (with the events already read from it) while it
        can serve events after `cursor`, else a new `Attach` call."""
        if self._stream is not None and cursor >= self._start:
            stream, self._stream = self._stream, None
            backlog, self._pending = self._pending, []
            return backlog, stream
        attach = self._client.runs.Attach(
            runs_pb.AttachRequest(
                session_id=self.session_id, run_id=self.run_id, after_sequence=cursor
            ),
            timeout=self._stream_timeout,
        )
        return [], attach

    async def events(self, after: int | None = None, *, heartbeats: bool = False) -> AsyncIterator[Event]:
        """The run's events after sequence `after` (None: after the ones
        this handle already delivered), ending with `Done`. Cut streams are
        re-attached by sequence; raises a `PilothouseError` for any other
        failure, or for a cut stream after `max_reattach` attempts in a row
        that brought no event. Heartbeats are skipped unless asked for."""
        cursor = self.last_sequence if after is None else after
        if self._done is not None and cursor >= self._done.sequence:
            return
        failures = 0
        while True:
            backlog, call = self._open(cursor)
            error: grpc.aio.AioRpcError | None = None
            try:
                async for raw in _chain(backlog, call):
                    if raw.WhichOneof("event") == "heartbeat":
                        if heartbeats:
                            yield event_from_proto(raw)
                        continue
                    if raw.sequence <= cursor:
                        continue  # delivered before a re-attach
                    failures = 0
                    cursor = self._delivered(raw)
                    event = event_from_proto(raw)
                    yield event
                    if isinstance(event, Done):
                        return
            except grpc.aio.AioRpcError as exc:
                if not is_stream_cut(exc):
                    raise error_from_rpc(exc) from exc
                error = exc
            finally:
                call.cancel()
            failures += 1
            if failures > self._max_reattach:
                if error is not None:
                    raise error_from_rpc(error) from error
                raise UnavailableError(message="the run's streams keep ending without done")
            self.reattach_count += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _delivered(self, raw: event_pb2.AgentEvent) -> int:
        if not self.run_id:
            self.run_id = raw.run_id
        self.last_sequence = max(self.last_sequence, raw.sequence)
        if raw.WhichOneof("event") == "done":
            self._done = Done(raw.session_id, raw.run_id, raw.sequence, raw)
        return raw.sequence

    async def result(self) -> Done:
        """Wait for the run to finish and return its `Done` (final
        response, stop reason, usage, steps). Re-attaches like `events`."""
        if self._done is None:
            async for _ in self.events():
                pass
        assert self._done is not None
        return self._done

    async def steer(self, content: str, sender: str = "") -> None:
        """Queue steering content on the run: appended, in order, before its
        next model round. FailedPreconditionError (`RUN_FINISHED`) when it
        has already made its last round."""
        await self._client.steer_session(self.session_id, content, sender)

    async def cancel(self, reason: str = "") -> runs_pb.CancelResponse:
        """Cancel the run; returns once it has stopped and its history is
        stored (`already_finished` when it had ended)."""
        return await self._client.cancel(self.session_id, self.run_id, reason)

    async def decide(
        self,
        request_id: str,
        verdict: VerdictName | event_pb2.Verdict.ValueType = event_pb2.VERDICT_UNSPECIFIED,
        *,
        reason: str = "",
        selected_options: Iterable[str] = (),
        text: str = "",
    ) -> None:
        """Answer an approval (`verdict` "approve", "deny" with a `reason`
        the model reads, or "always") or a question (`selected_options` or
        `text`). NotFoundError when no such request is pending."""
        value = _VERDICTS[verdict] if isinstance(verdict, str) else verdict
        await self._client.submit_decision(
            self.session_id,
            decision(request_id, value, reason=reason, selected_options=selected_options, text=text),
        )

    def __repr__(self) -> str:
        return f"RunHandle(session_id={self.session_id!r}, run_id={self.run_id!r}, last_sequence={self.last_sequence})"


async def _chain(
    backlog: list[event_pb2.AgentEvent], call: _EventCall
) -> AsyncIterator[event_pb2.AgentEvent]:
    for raw in backlog:
        yield raw
    while True:  # read(), as the start stream's first event was read with it
        response = await call.read()
        if not isinstance(response, _EVENT_RESPONSES):  # grpc.aio.EOF
            return
        yield response.event


__all__ = ["DEFAULT_MAX_REATTACH", "RunHandle", "decision", "is_stream_cut"]
