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

from pilothouse.auth.chain import ON_BEHALF_OF, on_behalf_of
from pilothouse.auth.credentials import AUTHORIZATION
from pilothouse.auth.principal import current_principal
from pilothouse.errors import NotFoundError
from pilothouse.rpc import tls as rpc_tls
from pilothouse.rpc.serving import channel_options
from pilothouse.runtime.runtime import RemoteRun
from pilothouse.v1 import run_service_pb2_grpc as runs_grpc

#: Metadata key of a forwarded call.
FORWARDED_KEY = "x-pilothouse-forwarded"


def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(key == FORWARDED_KEY for key, _ in context.invocation_metadata() or ())


class RunForwarder:
    """Channels to the other replicas, opened on first use; with `tls` they
    use TLS (and the runtime's client certificate), re-opened when the
    certificate files change.

    A forwarded call runs on the owner as the same principal: it carries
    the caller's own `authorization` (the owner checks it again), or, for
    a caller known by its certificate or mesh identity, which cannot
    travel, `x-pilothouse-on-behalf-of` naming the principal, which the
    owner accepts only from replicas in PILOTHOUSE_AUTH_TRUSTED_PEERS."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
        tls: rpc_tls.ClientTls | None = None,
    ) -> None:
        self._channels = rpc_tls.ClientChannels(
            tls,
            options=channel_options(max_message_bytes=max_message_bytes),
            interceptors=interceptors,
            close_grace_s=600.0,
        )

    def target(
        self, context: grpc.aio.ServicerContext, where: RemoteRun
    ) -> tuple[runs_grpc.RunServiceAsyncStub, dict[str, Any]]:
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
        kwargs: dict[str, Any] = {
            "metadata": ((FORWARDED_KEY, "1"), *_identity(context)),
            "timeout": context.time_remaining(),
        }
        return runs_grpc.RunServiceStub(channel), kwargs  # type: ignore[return-value]

    async def close(self) -> None:
        await self._channels.close()


def _identity(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The metadata that makes the forwarded call run as the caller."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == AUTHORIZATION and isinstance(value, str):
            return ((AUTHORIZATION, value),)
    principal = current_principal()
    if principal is None or principal.source == "none":
        return ()
    return ((ON_BEHALF_OF, on_behalf_of(principal)),)
