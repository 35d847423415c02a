"""How the SDK and the CLI open their gRPC channel: the one place for the
channel's options and its credentials. Plaintext, or TLS (optionally with a
client certificate, for mutual TLS), with or without a bearer token:

    PilothouseClient("pilothouse.example.com:443", tls=True, token=os.environ["PILOTHOUSE_TOKEN"])
    PilothouseClient("10.0.0.7:50051", tls=ClientTls(ca_file=Path("ca.pem"),
                     cert_file=Path("me.pem"), key_file=Path("me.key")))

The CLI's `--tls`, `--ca`, `--cert`, `--key`, `--server-name` and `--token`
(or PILOTHOUSE_TOKEN) map onto the same options.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "ClientTls",
    "add_connection_arguments",
    "bearer_token",
    "connection_options",
    "open_channel",
]

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


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS of a client channel: the CA to verify the server with (None: the
    system roots), an optional client certificate and key (for servers that
    require mutual TLS), and `server_name`, the name to verify in the
    server's certificate instead of the target's host (e.g. when calling a
    pod by its IP). Raises ValueError for a certificate without its key or
    the reverse."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both its certificate and its key file")

    def files(self) -> tuple[Path | None, ...]:
        return (self.ca_file, self.cert_file, self.key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now. Raises
        OSError when a file cannot be read."""
        roots = Path(self.ca_file).read_bytes() if self.ca_file else None
        key = chain = None
        if self.cert_file is not None and self.key_file is not None:
            key, chain = Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes()
        return grpc.ssl_channel_credentials(roots, key, chain)

    def options(self) -> list[tuple[str, Any]]:
        """Channel options TLS adds (the server-name override)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files each interceptor under the first call kind it implements,
# so one class per kind.
class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send `authorization: Bearer <token>` with every
    call of a channel (unary and streaming)."""
    return [cls(token) for cls in (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary,
                                   _BearerStreamStream)]


def open_channel(
    target: str,
    *,
    tls: bool | ClientTls | None = None,
    token: str | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `target` ("host:port", or any gRPC target such
    as `dns:///name:port`) with `CHANNEL_OPTIONS` and then `options`: TLS
    when `tls` is True (system roots) or a ClientTls, plaintext otherwise;
    `token` is sent with every call as a bearer token. `interceptors` run on
    every call (OpenTelemetry's aio client interceptors make the caller's
    span the parent of the run's trace)."""
    settings = ClientTls() if tls is True else (tls or None)
    chain = [*interceptors, *(bearer_token(token) if token else [])] or None
    all_options = [*CHANNEL_OPTIONS, *options]
    if settings is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=chain)
    return grpc.aio.secure_channel(
        target, settings.credentials(), options=[*all_options, *settings.options()],
        interceptors=chain,
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI's connection flags."""
    group = parser.add_argument_group("connection")
    group.add_argument("--tls", action="store_true", help="connect with TLS (implied by --ca)")
    group.add_argument("--ca", type=Path, help="CA bundle to verify the server (else system roots)")
    group.add_argument("--cert", type=Path, help="client certificate, for mutual TLS")
    group.add_argument("--key", type=Path, help="private key of --cert")
    group.add_argument("--server-name", default="", help="name to verify in the server's certificate")
    group.add_argument(
        "--token", default=os.environ.get("PILOTHOUSE_TOKEN"),
        help="bearer token (PILOTHOUSE_TOKEN; prefer the variable to the flag)",
    )


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """PilothouseClient keyword arguments from the connection flags.
    Raises ValueError for --cert without --key or the reverse."""
    tls: ClientTls | None = None
    if args.tls or args.ca or args.cert or args.key or args.server_name:
        tls = ClientTls(args.ca, args.cert, args.key, args.server_name)
    return {"tls": tls, "token": args.token or None}
