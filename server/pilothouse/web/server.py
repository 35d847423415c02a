"""The web port: an HTTP/1.1 server (uvicorn) in the runtime's own event
loop serving the Connect gateway (`/pilothouse.v1.<Service>/<Method>`),
the web console's files (`/`) and their settings (`/console/config.json`),
with CORS for the configured origins.

Its calls reach the runtime through a gRPC channel to the runtime's own
port (see `gateway`), so a browser is authenticated, authorized and
limited exactly as a gRPC client is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from google.protobuf import descriptor
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pilothouse.ops.sockets import listen_socket
from pilothouse.rpc import tls as rpc_tls
from pilothouse.rpc.serving import channel_options
from pilothouse.web.gateway import GatewayApplication, GrpcForwarder
from pilothouse.web.options import WebOptions
from pilothouse.web.services import BROWSER_SERVICES

log = logging.getLogger(__name__)

#: The built console (index.html and its assets), shipped in the package.
CONSOLE_DIR = Path(__file__).parent / "console"

#: Request headers a Connect or gRPC-Web client sends, besides credentials
#: and trace context; and the response headers it must be able to read.
CORS_ALLOW_HEADERS = (
    "authorization", "content-type", "connect-protocol-version", "connect-timeout-ms",
    "connect-accept-encoding", "connect-content-encoding", "grpc-timeout", "x-grpc-web",
    "x-user-agent", "traceparent", "tracestate",
)
CORS_EXPOSE_HEADERS = (
    "grpc-status", "grpc-message", "grpc-status-details-bin", "connect-content-encoding",
)
#: Seconds a browser may cache a CORS preflight answer.
CORS_MAX_AGE_S = 600
#: The console's pages: own scripts and styles only, calls to this origin.
CONSOLE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class _Routes:
    """RPC paths to the gateway, everything else to `pages`."""

    def __init__(self, gateway: GatewayApplication, pages: ASGIApp) -> None:
        self.gateway = gateway
        self.pages = pages
        self.prefixes = tuple(f"/{s.full_name}/" for s in BROWSER_SERVICES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            await self.gateway(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self.pages(scope, receive, send)


class _ConsoleHeaders:
    """Adds CONSOLE_HEADERS to the console's responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in CONSOLE_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(
    options: WebOptions,
    forwarder: GrpcForwarder,
    services: Sequence[descriptor.ServiceDescriptor] = BROWSER_SERVICES,
) -> ASGIApp:
    """The web port's ASGI application."""
    gateway = GatewayApplication(services, forwarder, read_max_bytes=options.max_message_bytes)
    config = {"trace_url": options.trace_url, "methods": gateway.paths}

    async def console_config(request: Request) -> Response:
        return JSONResponse(config, headers={"cache-control": "no-store"})

    routes: list[Any] = [Route("/console/config.json", console_config)]
    if options.console:
        if not (CONSOLE_DIR / "index.html").is_file():
            log.warning("the web console's files are missing from %s (make web builds them); "
                        "the web port serves the API only", CONSOLE_DIR)
        else:
            routes.append(Mount("/", _ConsoleHeaders(StaticFiles(directory=CONSOLE_DIR, html=True))))
    pages = Starlette(routes=routes)
    return CORSMiddleware(
        _Routes(gateway, pages),
        allow_origins=list(options.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        max_age=CORS_MAX_AGE_S,
    )


def bind(listen_address: str) -> socket.socket:
    """A listening TCP socket on `listen_address` (`host:port`, `[v6]:port`).
    Raises OSError."""
    return listen_socket(listen_address, what="the web port", default_host="0.0.0.0")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn in someone else's event loop: the process's signals stay
    the runtime's (its SIGTERM drains the runtime, which then stops this
    server), and `ready` is set once the socket accepts."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class WebServer:
    """The running web port; `host` and `port` are where it is bound."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, channel: grpc.aio.Channel,
                 tls: bool) -> None:
        self._server = _EmbeddedServer(config)
        self._sock = sock
        self._channel = channel
        self.tls = tls
        self.host: str = sock.getsockname()[0]
        self.port: int = sock.getsockname()[1]
        self._task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="web-port")
        ready = asyncio.ensure_future(self._server.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            self._task.result()  # raises what stopped it
            raise OSError("the web port stopped while starting")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting connections, give open responses `grace`
        seconds, then close them and the gRPC channel."""
        self._server.config.timeout_graceful_shutdown = max(int(grace), 1)
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()


async def start_web(options: WebOptions) -> WebServer:
    """Serve the web port `options` describe. Raises OSError when the
    address cannot be bound (or a TLS file cannot be read)."""
    channel = rpc_tls.open_channel(
        options.grpc_target,
        options.grpc_tls,
        options=channel_options(max_message_bytes=options.max_message_bytes),
    )
    forwarder = GrpcForwarder(channel, options.forwarded_headers)
    app = build_app(options, forwarder)
    tls = options.cert_file is not None and options.key_file is not None
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ws="none",
        ssl_certfile=str(options.cert_file) if tls else None,
        ssl_keyfile=str(options.key_file) if tls else None,
    )
    try:
        sock = bind(options.listen_address)
    except OSError:
        await channel.close()
        raise
    try:
        config.load()
        server = WebServer(config, sock, channel, tls)
        await server._start()
    except BaseException:
        sock.close()
        await channel.close()
        raise
    log.info("web port (Connect, gRPC-Web%s) on %s port %d%s", ", console" if options.console
             else "", "https" if tls else "http", server.port,
             f", CORS for {', '.join(options.cors_origins)}" if options.cors_origins else "")
    return server

