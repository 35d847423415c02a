"""How the client reaches a runtime: plaintext or TLS (optionally with a
client certificate, for mutual TLS), with or without a bearer token.

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
from pathlib import Path
from typing import Any

import grpc

from pilothouse.rpc.tls import ClientTls, open_channel

__all__ = [
    "BearerToken",
    "ClientTls",
    "add_connection_arguments",
    "connection_options",
    "open_client_channel",
]


class BearerToken(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def open_client_channel(
    target: str,
    *,
    tls: bool | ClientTls | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to `target`: TLS when `tls` is True (system roots) or a
    ClientTls, plaintext otherwise; `token` is sent with every call."""
    settings = ClientTls() if tls is True else (tls or None)
    chain = [*interceptors, *([BearerToken(token)] if token else [])]
    return open_channel(target, settings, options=options, interceptors=chain or None)


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
