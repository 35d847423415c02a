"""A2A's gRPC binding: the a2a-sdk's `A2AService` servicer (`lf.a2a.v1`)
over `PilothouseRequestHandler`, mounted on the runtime's own grpc.aio
server.

Sharing that server gives the A2A service everything the Pilothouse
services have, with nothing to configure twice: the port and its TLS
(rotated certificates included), authentication and roles (the
`AuthInterceptor`), OpenTelemetry server spans with the caller's
`traceparent`, health, reflection, keepalive and message limits, and the
graceful drain. An agent is named by the request's `tenant` (the agent
card's gRPC interface carries it, and the SDK's client fills it in).

Errors: the SDK's own mapping for A2A errors (ErrorInfo domain
`a2a-protocol.org`), except those made from a Pilothouse error A2A has no
equivalent for (UNAVAILABLE, RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...),
which keep Pilothouse's status code and ErrorInfo (domain `pilothouse.v1`).
"""

from __future__ import annotations

import grpc
from a2a.server.request_handlers.grpc_handler import GrpcHandler
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils import errors as a2a_errors
from a2a.utils.errors import A2AError

from pilothouse.a2a.errors import pilothouse_cause
from pilothouse.a2a.handler import PilothouseRequestHandler
from pilothouse.rpc.errors import status_of
from pilothouse.rpc.serving import Service

A2A_SERVICE: str = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name


class GrpcA2AHandler(GrpcHandler):
    """The SDK's servicer with Pilothouse's statuses where A2A has none."""

    async def abort_context(self, error: A2AError, context: grpc.aio.ServicerContext) -> None:
        cause = pilothouse_cause(error)
        if cause is not None and type(error) is a2a_errors.InternalError:
            await context.abort_with_status(status_of(cause))
        await super().abort_context(error, context)


def a2a_service(handler: PilothouseRequestHandler) -> Service:
    """The A2A service, to mount with the runtime's services."""
    return Service(a2a_pb2_grpc.add_A2AServiceServicer_to_server, GrpcA2AHandler(handler), A2A_SERVICE)
