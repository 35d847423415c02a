"""A2A's JSON-RPC binding over HTTP: a Starlette app with the a2a-sdk's
JSON-RPC routes, served by uvicorn on its own port.

Routes (`<name>` is an agent's name):

- `POST /agents/<name>/`: JSON-RPC 2.0 (`SendMessage`,
  `SendStreamingMessage` and `SubscribeToTask` as server-sent events,
  `GetTask`, `CancelTask`, ...), dispatched by the SDK's
  `JsonRpcDispatcher` to `PilothouseRequestHandler`; A2A 0.3's methods
  (`message/send`, `message/stream`, `tasks/get`, `tasks/cancel`,
  `tasks/resubscribe`) too, through the SDK's 0.3 adapter.
- `GET /agents/<name>/.well-known/agent-card.json`: the agent's card (404
  for an unknown agent).
- `GET /agents/`: `{"agents": [{"name", "description", "url", "card"}]}`,
  every agent with its endpoint and card URL.

Calls carry credentials as the gRPC API does: `Authorization: Bearer`
(tokens, JWT) or a mesh sidecar's headers, checked by the same
`AuthChain`; missing or bad credentials are HTTP 401, a principal without
a runtime role 403, a credential that cannot be checked now 503. Agent
cards and the agent list are open, like health checks: they say how to
authenticate. Every request is an OpenTelemetry SERVER span
(opentelemetry-instrumentation-asgi); a caller's `traceparent` becomes
its parent, and so the parent of the run it starts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder, create_jsonrpc_routes
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pilothouse.a2a.cards import CardSettings, agent_card, agent_path, card_path
from pilothouse.a2a.handler import AGENT_KEY, PilothouseRequestHandler
from pilothouse.auth.audit import audit
from pilothouse.auth.chain import AuthChain, AuthRefused
from pilothouse.auth.credentials import CallCredentials
from pilothouse.auth.policy import RUNTIME_POLICY, MethodPolicy
from pilothouse.auth.principal import reset_principal, set_principal
from pilothouse.errors import NotFoundError, PilothouseError, UnavailableError
from pilothouse.ops.sockets import listen_socket
from pilothouse.rpc.tls import ServerTls
from pilothouse.runtime.runtime import Runtime

log = logging.getLogger(__name__)

AGENTS_PATH = "/agents/"


class _AgentContextBuilder(DefaultServerCallContextBuilder):
    """The SDK's context, plus the agent the URL names."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[AGENT_KEY] = request.path_params.get("agent", "")
        return context


def build_app(
    runtime: Runtime,
    handler: PilothouseRequestHandler,
    cards: Callable[[], CardSettings],
    *,
    auth: AuthChain | None = None,
    stream_grace_s: float = 0.0,
) -> ASGIApp:
    """The ASGI app (see the module docstring). `cards` gives the card
    settings at request time (the bound port is known only once serving);
    without `auth` every call is the anonymous principal's."""

    async def card(request: Request) -> Response:
        name = request.path_params["agent"]
        try:
            agent = await runtime.get_agent(name)
        except NotFoundError:
            return JSONResponse({"error": f"no agent named {name!r}"}, status_code=404)
        return JSONResponse(agent_card_to_dict(agent_card(agent, cards())))

    async def agents(request: Request) -> Response:
        where = cards()
        listed: list[dict[str, str]] = []
        token = ""
        while True:
            page, token = await runtime.list_agents(100, token)
            for agent in page:
                name = agent.config.name
                listed.append({
                    "name": name,
                    "description": agent.config.description,
                    "url": where.public_url + agent_path(name),
                    "card": where.public_url + card_path(name),
                })
            if not token:
                return JSONResponse({"agents": listed})

    routes: list[Any] = [
        Route(AGENTS_PATH, agents, methods=["GET"]),
        Route(card_path("{agent}"), card, methods=["GET"]),
        *create_jsonrpc_routes(
            handler, agent_path("{agent}"), context_builder=_AgentContextBuilder(),
            enable_v0_3_compat=True, shutdown_grace_period=stream_grace_s,
        ),
    ]
    app: ASGIApp = Starlette(routes=routes)
    if auth is not None:
        app = _Authenticated(app, auth, RUNTIME_POLICY)
    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])


class _Authenticated:
    """ASGI middleware: the principal of every JSON-RPC call (see the module
    docstring), set as the current principal while the call runs."""

    def __init__(self, app: ASGIApp, chain: AuthChain, policy: MethodPolicy) -> None:
        self.app = app
        self.chain = chain
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "GET":
            await self.app(scope, receive, send)  # cards and the agent list are open
            return
        metadata: dict[str, str] = {}
        for key, value in scope.get("headers", ()):
            metadata.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        client = scope.get("client")
        peer = f"ipv4:{client[0]}:{client[1]}" if client else ""
        method = f"A2A {scope.get('path', '')}"
        try:
            principal = await self.chain.authenticate(CallCredentials(metadata, peer=peer))
        except AuthRefused as refused:
            audit("call.refused", None, server="pilothouse-a2a", method=method,
                  code=refused.error.reason, detail=refused.detail)
            await _refuse(scope, receive, send, 401, refused.error)
            return
        except UnavailableError as exc:
            await _refuse(scope, receive, send, 503, exc)
            return
        if not self.policy.allows(principal, "/pilothouse.v1.RunService/StreamTo"):
            audit("call.refused", principal, server="pilothouse-a2a", method=method,
                  code="PERMISSION_DENIED")
            await _refuse(scope, receive, send, 403, PilothouseError(
                "permission denied", reason="PERMISSION_DENIED"))
            return
        token = set_principal(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_principal(token)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, error: PilothouseError) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    body = {"error": {"code": status, "message": error.message, "reason": error.reason}}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


@dataclass(slots=True)
class HttpServer:
    """A running uvicorn server on a socket of its own."""

    server: uvicorn.Server
    sock: socket.socket
    task: asyncio.Task[None]
    port: int
    tls: bool

    async def stop(self) -> None:
        """Stop accepting, give open connections the graceful-shutdown
        time, then close them."""
        self.server.should_exit = True
        await self.task
        await self.server.shutdown(sockets=[self.sock])


async def serve_http(
    app: ASGIApp, address: str, *, tls: ServerTls | None = None, grace_s: float = 5.0
) -> HttpServer:
    """Serve `app` on `address` ("host:port"; port 0 picks a free one),
    over TLS with `tls` (the certificate is read at start; mutual TLS
    requires client certificates). Open connections get `grace_s` seconds
    when it stops. Raises OSError when the address cannot be bound."""
    sock = listen_socket(address, what="A2A")
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        if tls.client_ca_file is not None:
            options |= {"ssl_ca_certs": str(tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", server_header=False,
        timeout_graceful_shutdown=max(1, round(grace_s)), **options,
    )
    config.load()
    server = uvicorn.Server(config)
    # Not `serve()`: it captures SIGINT and SIGTERM, which belong to the
    # runtime's drain. Its three steps, run here, leave signals alone.
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    task = asyncio.create_task(server.main_loop(), name="a2a-http")
    return HttpServer(server, sock, task, sock.getsockname()[1], tls is not None)
