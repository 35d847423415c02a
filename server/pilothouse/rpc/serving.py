"""Start a grpc.aio server with health checking, reflection and graceful
shutdown, the same way for every Pilothouse server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

#: Message size limit on both directions, in bytes (oversize is
#: RESOURCE_EXHAUSTED, raised by gRPC itself).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Keepalive and connection-age settings suited to long streams behind a
# proxy or mesh: pings keep idle HTTP/2 connections alive, and a maximum
# connection age lets connections rebalance across pods.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_connection_age_ms", 30 * 60 * 1000),
    ("grpc.max_connection_age_grace_ms", 5 * 60 * 1000),
]


@dataclass(frozen=True, slots=True)
class Service:
    """A servicer to mount: its generated `add_*_to_server` function and the
    full service name (for health and reflection)."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


@dataclass(slots=True)
class RunningServer:
    """A started server: the bound `port` and the health servicer."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int

    async def drain(self, grace: float) -> None:
        """Mark every service NOT_SERVING, then stop, giving in-flight RPCs
        `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    services: Sequence[Service],
    address: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Build, bind and start a server on `address` ("host:port"; port 0
    picks a free one). Raises RuntimeError if the address cannot be bound."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            *SERVER_OPTIONS,
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.add_to_server(service.servicer, server)
    names = [s.full_name for s in services]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health, port)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
