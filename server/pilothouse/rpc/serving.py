"""Start a grpc.aio server with health checking, reflection, tracing and
graceful shutdown, the same way for every Pilothouse server.

TLS (`pilothouse.rpc.tls.ServerTls`) is optional; so is a second,
plaintext port carrying only `grpc.health.v1.Health` (Kubernetes' gRPC
probes cannot speak TLS), which shares the main server's health servicer
and so reports the same states, drain included.

Drain protocol (`RunningServer`): `enter_drain()` turns every service's
health NOT_SERVING at once, so load balancers and Kubernetes stop routing
new work here, while the server still answers (health checks, reads, the
streams of runs that are finishing); `stop(grace)` then refuses new RPCs
and gives in-flight ones `grace` seconds before cancelling them. A second
`stop(0)` during the first cancels them at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from pilothouse.ops.telemetry import tracing_server_interceptor
from pilothouse.rpc.decoding import RequestDecoding, RequestRules
from pilothouse.rpc.tls import ServerTls

log = logging.getLogger(__name__)

#: Message size limit on both directions, in bytes (oversize is
#: RESOURCE_EXHAUSTED, raised by gRPC itself).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive and connection-age policy of a server, in seconds.

    Suited to long streams behind proxies and meshes: the server pings idle
    connections so that NATs and proxies keep them (`time_s`), accepts
    client pings down to `min_ping_interval_s` (clients must not ping more
    often, or they get GOAWAY "too_many_pings"), and asks connections older
    than `max_connection_age_s` to go away (0: never) so that clients
    rebalance across pods; their RPCs get `max_connection_age_grace_s`.
    """

    time_s: float = 30.0
    timeout_s: float = 10.0
    min_ping_interval_s: float = 10.0
    max_connection_age_s: float = 30 * 60.0
    max_connection_age_grace_s: float = 5 * 60.0


#: Calls grpc core may queue before the Python server takes them up.
MAX_PENDING_REQUESTS = 10_000


def server_options(
    keepalive: Keepalive | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    reuse_port: bool = False,
) -> list[tuple[str, Any]]:
    """gRPC core options for a server with `keepalive` and message limits.
    grpcio sets SO_REUSEPORT on its listening sockets unless told not to,
    so two servers on one port would silently share it; without
    `reuse_port` (only `pilothouse-server --workers` shares a port) binding
    a port in use fails."""
    k = keepalive or Keepalive()
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", int(k.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(k.timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(k.min_ping_interval_s * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(k.min_ping_interval_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # grpc core queues calls the Python server has not taken up yet and,
        # past about 1,000, cancels new ones at random: a burst of runs
        # (make bench, 2,000 simultaneous StreamTo) lost 10 % that way.
        ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_REQUESTS),
    ]
    if k.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(k.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(k.max_connection_age_grace_s * 1000)),
        ]
    return options


def channel_options(
    *,
    keepalive_time_s: float = 30.0,
    keepalive_timeout_s: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    lb_policy: str | None = None,
) -> list[tuple[str, Any]]:
    """gRPC core options for a client channel. Keep `keepalive_time_s` at
    or above the server's minimum ping interval."""
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if lb_policy:
        options.append(("grpc.lb_policy_name", lb_policy))
    return options


#: The default server options (kept for callers that read them).
SERVER_OPTIONS: list[tuple[str, Any]] = server_options()


class HealthServicer(health_aio.HealthServicer):
    """grpc.health.v1.Health with `List` too (the package's aio servicer
    answers it UNIMPLEMENTED): every service's current status."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in dict(self._server_status).items()
            }
        )


#: Server reflection v1 (grpcio-reflection ships v1alpha only; the two
#: protocols are the same messages under another package name).
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection as both v1alpha and v1 (buf curl and grpcurl try v1
    first). Only v1alpha is listed: its schema ships with grpcio-reflection,
    v1's does not, and a listed service must be describable."""
    servicer = reflection.aio.ReflectionServicer([*service_names, reflection.SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


@dataclass(frozen=True, slots=True)
class Service:
    """A servicer to mount: its generated `add_*_to_server` function and the
    full service name (for health and reflection)."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


@dataclass(slots=True)
class RunningServer:
    """A started server: the bound `port`, the health servicer and the
    names of the services it serves; `health_port` is the plaintext health
    port (0: none)."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int
    services: list[str] = field(default_factory=list)
    draining: bool = False
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    tls: bool = False
    #: The bound ports of `start_server`'s `extra_addresses`, in order.
    extra_ports: list[int] = field(default_factory=list)

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report `service` ("" for the whole server) SERVING or
        NOT_SERVING; ignored once draining."""
        await self.health.set(service, SERVING if serving else NOT_SERVING)

    async def enter_drain(self) -> None:
        """Every service NOT_SERVING, for good; RPCs are still accepted."""
        self.draining = True
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        """Refuse new RPCs; in-flight ones get `grace` seconds (None: no
        limit), then are cancelled. The health port answers until the main
        server has stopped."""
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)

    async def drain(self, grace: float) -> None:
        """Mark every service NOT_SERVING, then stop, giving in-flight RPCs
        `grace` seconds."""
        await self.enter_drain()
        await self.stop(grace)


async def start_server(
    services: Sequence[Service],
    address: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive: Keepalive | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tracing: bool = True,
    tracer_provider: Any = None,
    tls: ServerTls | None = None,
    health_address: str = "",
    request_rules: RequestRules | None = None,
    reuse_port: bool = False,
    extra_addresses: Sequence[str] = (),
) -> RunningServer:
    """Build, bind and start a server on `address` ("host:port"; port 0
    picks a free one). With `tracing`, the OpenTelemetry server interceptor
    comes first: a caller's `traceparent` becomes the parent of the RPC's
    server span (health checks and reflection are not traced); `interceptors`
    follow it (authentication among them). With `tls` the port serves TLS
    (mutual TLS with a client CA). With `health_address`, a second,
    plaintext server there serves only the health service. A request that
    cannot be decoded, or that breaks `request_rules`, is INVALID_ARGUMENT
    before its handler runs (`pilothouse.rpc.decoding`). With `reuse_port`
    the ports are bound with SO_REUSEPORT, shared with other processes that
    do the same (the workers of `pilothouse-server --workers`); without it a
    port in use is an error. `extra_addresses` are further ports serving
    the same services (a worker's own internal port); their bound ports are
    `RunningServer.extra_ports`. Raises RuntimeError naming the address and
    the cause if an address cannot be bound, TlsFileError (a ValueError) if
    the TLS files cannot be loaded."""
    chain: list[grpc.aio.ServerInterceptor] = []
    if tracing:
        chain.append(tracing_server_interceptor(tracer_provider))
    chain.extend(interceptors)
    # Last, so that authentication answers first; the request is still
    # decoded before any handler code runs.
    chain.append(RequestDecoding(request_rules))
    server = grpc.aio.server(
        interceptors=chain,
        options=server_options(keepalive, max_message_bytes, reuse_port=reuse_port),
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.add_to_server(service.servicer, server)
    names = [s.full_name for s in services]
    enable_reflection([*names, HEALTH_SERVICE_NAME], server)
    credentials = tls.credentials() if tls is not None else None
    port = _add_port(server, address, credentials)
    extra_ports = [_add_port(server, extra, credentials) for extra in extra_addresses]
    health_server, health_port = None, 0
    if health_address:
        health_server, health_port = _health_only_server(health, health_address, reuse_port)
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ["", *names]:
        await health.set(name, SERVING)
    return RunningServer(
        server, health, port, names,
        health_server=health_server, health_port=health_port, tls=tls is not None,
        extra_ports=extra_ports,
    )


def _add_port(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None,
    what: str = "",
) -> int:
    """Bind `address` on `server`; the bound port. RuntimeError naming the
    address and, when the OS tells it, the cause (grpcio only says "Failed
    to bind")."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}{what}: {_bind_cause(address)}")
    return port


def _bind_cause(address: str) -> str:
    """Why `address` cannot be bound, found by binding it with a plain
    socket (no SO_REUSEPORT)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "the address is already in use (is another server listening there?)"
        return exc.strerror or str(exc)
    except ValueError:
        return "not a host:port address"
    return "the address cannot be bound"


def _health_only_server(
    health: health_aio.HealthServicer, address: str, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server on `address` serving nothing but `health` (no
    reflection, no interceptors). Raises RuntimeError if it cannot bind."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server, _add_port(server, address, None, " (health port)")


class StopSignals:
    """SIGTERM/SIGINT handling for a draining server: the first signal sets
    `stop` (begin the drain), a second one sets `force` (cancel what is
    still running)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.received = 0

    def install(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def _on_signal(self, sig: signal.Signals) -> None:
        self.received += 1
        if self.received == 1:
            log.info("%s received: draining (a second signal cancels what still runs)", sig.name)
            self.stop.set()
        else:
            log.warning("%s received again: cancelling what still runs", sig.name)
            self.force.set()


def install_stop_signals(stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
    """Set `stop` on the first SIGTERM or SIGINT and `force` (if given) on
    the next one."""
    signals = StopSignals()
    signals.stop = stop
    if force is not None:
        signals.force = force
    signals.install()
