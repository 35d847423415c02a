"""Forward run calls to the replica that holds the run.

A run's live event log and commands live in the process that runs it.
When a call about a run reaches another replica (Attach, Steer, Cancel,
SteerSession, SubmitDecision, a message for a busy session, an idempotent
retry), the runtime answers with a `RemoteRun` naming the owner's address
(recorded in the run's record), and the handler forwards the call there
over gRPC, marked so that it is never forwarded twice.
"""

from __future__ import annotations

from typing import Any

import grpc

from pilothouse.errors import NotFoundError
from pilothouse.rpc.serving import channel_options
from pilothouse.runtime.runtime import RemoteRun
from pilothouse.v1 import run_service_pb2_grpc as runs_grpc

#: Metadata key of a forwarded call.
FORWARDED_KEY = "x-pilothouse-forwarded"


def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(key == FORWARDED_KEY for key, _ in context.invocation_metadata() or ())


class RunForwarder:
    """Channels to the other replicas, opened on first use."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        self._options = channel_options(max_message_bytes=max_message_bytes)
        self._interceptors = interceptors
        self._channels: dict[str, grpc.aio.Channel] = {}

    def target(
        self, context: grpc.aio.ServicerContext, where: RemoteRun
    ) -> tuple[runs_grpc.RunServiceStub, dict[str, Any]]:
        """The owner's stub and the keyword arguments of a forwarded call
        (marking metadata, the caller's remaining deadline). NOT_FOUND when
        this call was itself forwarded (the replicas disagree on the owner)."""
        if was_forwarded(context):
            raise NotFoundError(
                f"run {where.run_id} of session {where.session_id!r} is not on this replica",
                reason="RUN_NOT_FOUND",
                metadata={"session_id": where.session_id, "run_id": where.run_id},
            )
        channel = self._channels.get(where.owner)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                where.owner, options=self._options, interceptors=self._interceptors
            )
            self._channels[where.owner] = channel
        kwargs: dict[str, Any] = {
            "metadata": ((FORWARDED_KEY, "1"),),
            "timeout": context.time_remaining(),
        }
        return runs_grpc.RunServiceStub(channel), kwargs

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
