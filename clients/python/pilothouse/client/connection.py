"""How the SDK and the CLI open their gRPC channel: the one place for the
channel's options and its credentials."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Message limits match the runtime's default; keepalive pings keep idle
#: streams (a run waiting on a slow tool) open through proxies.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def open_channel(
    target: str,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `target` ("host:port", or any gRPC target such
    as `dns:///name:port`) with `CHANNEL_OPTIONS` and then `options`.
    `interceptors` run on every call (OpenTelemetry's aio client
    interceptors make the caller's span the parent of the run's trace).
    The channel is plaintext."""
    return grpc.aio.insecure_channel(
        target,
        options=[*CHANNEL_OPTIONS, *options],
        interceptors=list(interceptors) or None,
    )
