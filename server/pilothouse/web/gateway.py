"""The Connect and gRPC-Web face of the runtime's gRPC services.

Every method of the services a browser may call is served over HTTP/1.1
by `connectrpc` (the Connect protocol, unary and server streaming, and
gRPC-Web) and forwarded, as the same protobuf request, over a gRPC channel
to the runtime's own gRPC port, carrying the caller's `authorization`
header (and trace context) as metadata. So the gRPC server stays the one
place where calls are authenticated, authorized, limited, audited, traced
and handled: the gateway only translates. Its answers are the gRPC
answers: the status code becomes the Connect code, and the
`google.rpc.Status` details (ErrorInfo, BadRequest, RetryInfo...) travel
as Connect error details.

Methods are found in the services' descriptors, so a method added to a
proto is served without a change here. Bidirectional methods (`Steer`)
are not: HTTP/1.1 cannot carry them, and a browser uses the server
streams (`StreamTo`, `Attach`) with the unary commands (`SteerSession`,
`Cancel`, `SubmitDecision`) instead. The Connect protocol answers an
unknown method with 404, which clients read as UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_codecs
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor, message, message_factory
from google.rpc import status_pb2
from protobuf.wkt import Any as AnyDetail

log = logging.getLogger(__name__)

#: Request headers passed on to the gRPC call as metadata: the caller's
#: credentials and W3C trace context. Nothing else is (a browser must not
#: set the replicas' own forwarding markers).
FORWARDED_HEADERS: tuple[str, ...] = ("authorization", "traceparent", "tracestate")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: What a method's RPC form is: (client streaming, server streaming).
_UNARY = (False, False)
_SERVER_STREAMING = (False, True)


def connect_code(code: grpc.StatusCode) -> Code:
    """The Connect code of a gRPC status code (the same set, one spelling
    apart: CANCELLED is `canceled`)."""
    if code is grpc.StatusCode.CANCELLED:
        return Code.CANCELED
    try:
        return Code[code.name]
    except KeyError:
        return Code.UNKNOWN


def connect_error(error: grpc.aio.AioRpcError) -> ConnectError:
    """The Connect error with the same code, message and status details as
    a failed gRPC call."""
    details: list[ErrorDetail] = []
    for key, value in error.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except message.DecodeError:
                break
            details = [
                ErrorDetail(AnyDetail(type_url=d.type_url, value=d.value)) for d in status.details
            ]
            break
    return ConnectError(connect_code(error.code()), error.details() or "", details)


class GrpcForwarder:
    """Calls the runtime's gRPC port for the gateway. `channel` is that
    port's channel; `headers` (lower case) are the request headers copied
    into the call's metadata, besides FORWARDED_HEADERS (e.g. a mesh
    sidecar's identity header)."""

    def __init__(self, channel: grpc.aio.Channel, headers: Iterable[str] = ()) -> None:
        self.channel = channel
        self.headers = (*FORWARDED_HEADERS, *(h.lower() for h in headers))

    def metadata(self, ctx: RequestContext[Any, Any]) -> tuple[tuple[str, str], ...]:
        request_headers = ctx.request_headers
        return tuple(
            (key, value)
            for key in self.headers
            if (value := request_headers.get(key)) is not None
        )

    @staticmethod
    def timeout(ctx: RequestContext[Any, Any]) -> float | None:
        remaining = ctx.timeout_ms
        return None if remaining is None else max(remaining, 0.0) / 1000.0

    def unary(
        self, path: str, output: type[message.Message]
    ) -> Callable[[message.Message, RequestContext[Any, Any]], Any]:
        call = self.channel.unary_unary(
            path, request_serializer=_serialize, response_deserializer=output.FromString
        )

        async def forward(request: message.Message, ctx: RequestContext[Any, Any]) -> Any:
            try:
                return await call(request, metadata=self.metadata(ctx), timeout=self.timeout(ctx))
            except grpc.aio.AioRpcError as error:
                raise connect_error(error) from None

        return forward

    def server_streaming(
        self, path: str, output: type[message.Message]
    ) -> Callable[[message.Message, RequestContext[Any, Any]], AsyncIterator[Any]]:
        call = self.channel.unary_stream(
            path, request_serializer=_serialize, response_deserializer=output.FromString
        )

        async def forward(
            request: message.Message, ctx: RequestContext[Any, Any]
        ) -> AsyncIterator[Any]:
            stream = call(request, metadata=self.metadata(ctx), timeout=self.timeout(ctx))
            try:
                async for response in stream:
                    yield response
            except grpc.aio.AioRpcError as error:
                raise connect_error(error) from None
            finally:
                # The browser went away (or the stream ended): a cancel of
                # the gRPC call is the disconnect the runtime sees.
                stream.cancel()

        return forward


def _serialize(request: message.Message) -> bytes:
    return request.SerializeToString()


def _idempotency(method: descriptor.MethodDescriptor) -> IdempotencyLevel:
    options = method.GetOptions()
    level = options.idempotency_level if options.HasField("idempotency_level") else 0
    if level == options.NO_SIDE_EFFECTS:
        return IdempotencyLevel.NO_SIDE_EFFECTS
    if level == options.IDEMPOTENT:
        return IdempotencyLevel.IDEMPOTENT
    return IdempotencyLevel.UNKNOWN


def endpoints(
    service: descriptor.ServiceDescriptor, forwarder: GrpcForwarder
) -> dict[str, Any]:
    """The Connect endpoints of `service`'s unary and server-streaming
    methods, by URL path (`/package.Service/Method`)."""
    found: dict[str, Any] = {}
    for method in service.methods:
        shape = (method.client_streaming, method.server_streaming)
        if shape not in (_UNARY, _SERVER_STREAMING):
            continue
        path = f"/{service.full_name}/{method.name}"
        input_type = message_factory.GetMessageClass(method.input_type)
        output_type = message_factory.GetMessageClass(method.output_type)
        info = MethodInfo(
            name=method.name,
            service_name=service.full_name,
            input=input_type,
            output=output_type,
            idempotency_level=_idempotency(method),
            stream_type=StreamType.UNARY if shape == _UNARY else StreamType.SERVER_STREAM,
        )
        if shape == _UNARY:
            found[path] = Endpoint.unary(method=info, function=forwarder.unary(path, output_type))
        else:
            found[path] = Endpoint.server_stream(
                method=info, function=forwarder.server_streaming(path, output_type)
            )
    return found


class GatewayApplication(ConnectASGIApplication[GrpcForwarder]):
    """One ASGI application serving `services` through `forwarder`;
    requests over `read_max_bytes` are refused (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        services: Sequence[descriptor.ServiceDescriptor],
        forwarder: GrpcForwarder,
        *,
        read_max_bytes: int | None = None,
    ) -> None:
        def resolve(svc: GrpcForwarder) -> Mapping[str, Any]:
            found: dict[str, Any] = {}
            for service in services:
                found.update(endpoints(service, svc))
            return found

        self.paths = sorted(resolve(forwarder))
        super().__init__(
            service=forwarder,
            endpoints=resolve,
            read_max_bytes=read_max_bytes,
            codecs=google_protobuf_codecs(),
        )

    @property
    def path(self) -> str:
        return "/"
