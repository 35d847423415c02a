"""Browser access: the web port serves the runtime's AgentService,
SessionService and RunService over the Connect protocol and gRPC-Web
(forwarded to the runtime's own gRPC port, behind its authentication),
and the web console. It needs the `web` extra (connectrpc, starlette,
uvicorn), imported only when the port is configured."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pilothouse.app.settings import Settings
from pilothouse.web.options import WebOptions, WebSettingsError, loopback_target, web_options

if TYPE_CHECKING:
    from pilothouse.web.server import WebServer

__all__ = ["WebPlan", "WebServer", "WebSettingsError", "prepare_web_port"]


@dataclasses.dataclass(frozen=True, slots=True)
class WebPlan:
    """A checked web port, to start once the gRPC server is bound."""

    options: WebOptions
    grpc_listen_address: str

    async def start(self, grpc_port: int) -> WebServer:
        """Serve it, calling the gRPC server bound to `grpc_port`. Raises
        OSError when its address cannot be bound."""
        from pilothouse.web.server import start_web

        target = loopback_target(self.grpc_listen_address, grpc_port)
        return await start_web(dataclasses.replace(self.options, grpc_target=target))


def prepare_web_port(settings: Settings) -> WebPlan | None:
    """The web port `settings` describe (None: PILOTHOUSE_WEB_LISTEN_ADDRESS
    is empty), checked before anything starts. Raises WebSettingsError for
    unsafe or bad settings, or when the `web` extra is not installed."""
    if not settings.web_listen_address:
        return None
    try:
        import connectrpc  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise WebSettingsError(
            f"PILOTHOUSE_WEB_LISTEN_ADDRESS needs the web extra ({exc.name} is missing): "
            "pip install 'pilothouse[web]'"
        ) from exc
    return WebPlan(web_options(settings, 0), settings.listen_address)
