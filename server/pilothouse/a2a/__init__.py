"""Every Pilothouse agent as an A2A agent, through the official a2a-sdk.

An adapter over the `Runtime` facade, as the gRPC handlers are (the
runtime knows nothing of A2A): `handler` maps the protocol's methods onto
runs and sessions, `tasks` folds a run's events into an A2A task and its
stream updates, `inbound` reads messages and answers, `cards` describes
each agent; `http_binding` serves JSON-RPC over HTTP on its own port,
`grpc_binding` the gRPC binding on the runtime's gRPC server.

`A2AGateway` is what the composition root starts and stops.
"""

from __future__ import annotations

import socket

from pilothouse.a2a.cards import CardSettings, agent_card, agent_path, card_path
from pilothouse.a2a.grpc_binding import A2A_SERVICE, a2a_service
from pilothouse.a2a.handler import PilothouseRequestHandler
from pilothouse.a2a.http_binding import HttpServer, build_app, serve_http
from pilothouse.auth.chain import AuthChain
from pilothouse.auth.limits import PrincipalLimiter
from pilothouse.rpc.serving import Service
from pilothouse.rpc.tls import ServerTls
from pilothouse.runtime.runtime import Runtime

__all__ = [
    "A2A_SERVICE",
    "A2AGateway",
    "CardSettings",
    "PilothouseRequestHandler",
    "agent_card",
    "agent_path",
    "card_path",
]


class A2AGateway:
    """The A2A bindings of one runtime: `grpc_service()` to mount on the
    runtime's gRPC server, `start_http()` for the JSON-RPC port; the cards
    name `grpc_address` (set once the gRPC server is bound, "" for none)."""

    def __init__(self, runtime: Runtime, limiter: PrincipalLimiter | None = None) -> None:
        self.runtime = runtime
        self.handler = PilothouseRequestHandler(runtime, limiter)
        self.grpc_address = ""
        self.public_url = ""
        self.bearer = False
        self.http: HttpServer | None = None

    def grpc_service(self) -> Service:
        return a2a_service(self.handler)

    def card_settings(self) -> CardSettings:
        return CardSettings(self.public_url, self.grpc_address, self.bearer)

    @property
    def http_port(self) -> int:
        """The bound JSON-RPC port (0: not serving)."""
        return self.http.port if self.http is not None else 0

    async def start_http(
        self,
        address: str,
        auth: AuthChain,
        *,
        tls: ServerTls | None = None,
        public_url: str = "",
        grace_s: float = 5.0,
    ) -> None:
        """Serve JSON-RPC on `address` ("host:port", port 0 for any).
        `public_url` is how clients reach it (default: the listen address,
        this host's name for a wildcard host). Raises OSError when the
        address cannot be bound."""
        self.bearer = not auth.anonymous_only
        app = build_app(self.runtime, self.handler, self.card_settings, auth=auth, stream_grace_s=grace_s)
        self.http = await serve_http(app, address, tls=tls, grace_s=grace_s)
        self.public_url = (public_url or _default_url(address, self.http.port, self.http.tls)).rstrip("/")

    async def stop(self) -> None:
        if self.http is not None:
            http, self.http = self.http, None
            await http.stop()


def _default_url(address: str, port: int, tls: bool) -> str:
    host = address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
