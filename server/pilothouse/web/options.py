"""What the web port serves and how it reaches the runtime, from the
server's settings, with the checks that refuse an unsafe web port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pilothouse.app.settings import Settings
from pilothouse.auth.chain import check_exposure
from pilothouse.rpc.tls import ClientTls, listen_host


class WebSettingsError(ValueError):
    """The web port cannot be served as configured; the message says why."""


@dataclass(frozen=True, slots=True)
class WebOptions:
    """The web port: its address (`host:port`, port 0 for any), the
    origins other than its own whose pages may call it (`*`: any), whether
    it serves the console, the trace viewer's URL template (`{trace_id}`
    is replaced), and HTTPS with `cert_file`/`key_file`.

    `grpc_target` is the runtime's own gRPC port, called over `grpc_tls`
    (None: plaintext); `forwarded_headers` are the request headers passed
    on besides credentials and trace context; requests over
    `max_message_bytes` are refused."""

    listen_address: str
    grpc_target: str
    cors_origins: tuple[str, ...] = ()
    console: bool = True
    trace_url: str = ""
    cert_file: Path | None = None
    key_file: Path | None = None
    grpc_tls: ClientTls | None = None
    forwarded_headers: tuple[str, ...] = ()
    max_message_bytes: int = 16 * 1024 * 1024


def loopback_target(listen_address: str, port: int) -> str:
    """How this process reaches its own gRPC server listening on
    `listen_address` (bound to `port`): a loopback address when it listens
    on every interface, else the address it listens on."""
    if listen_address.startswith(("unix:", "unix-abstract:")):
        return listen_address
    host = listen_host(listen_address)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def web_options(settings: Settings, grpc_port: int) -> WebOptions:
    """The web port `settings` describe, for a runtime whose gRPC server
    is bound to `grpc_port`. Raises WebSettingsError.

    The same exposure rules as the gRPC port hold (no `none` on an
    address other hosts reach unless allowed, `mesh` only where only the
    sidecar reaches it). `mtls` is refused: a browser's call reaches the
    gRPC port with the runtime's own client certificate, which that
    authenticator would take for the caller."""
    address = settings.web_listen_address
    if "mtls" in settings.auth:
        raise WebSettingsError(
            "PILOTHOUSE_WEB_LISTEN_ADDRESS cannot be used with PILOTHOUSE_AUTH=mtls: the web "
            "port passes on the caller's Authorization header, and a client certificate cannot "
            "travel through it. Authenticate browsers with tokens or jwt (without mtls in "
            "PILOTHOUSE_AUTH), or leave the web port off"
        )
    try:
        check_exposure(settings, address, "pilothouse-server web port")
    except ValueError as exc:
        raise WebSettingsError(f"PILOTHOUSE_WEB_LISTEN_ADDRESS: {exc}") from exc
    forwarded: list[str] = []
    if "mesh" in settings.auth:
        forwarded.append(settings.auth_mesh_identity_header)
        if settings.auth_mesh_claims_header:
            forwarded.append(settings.auth_mesh_claims_header)
    for origin in settings.web_cors_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise WebSettingsError(
                f"PILOTHOUSE_WEB_CORS_ORIGINS: {origin!r} is not an origin "
                "(scheme://host[:port], or *)"
            )
    if settings.web_trace_url and "{trace_id}" not in settings.web_trace_url:
        raise WebSettingsError("PILOTHOUSE_WEB_TRACE_URL must contain {trace_id}")
    return WebOptions(
        listen_address=address,
        grpc_target=loopback_target(settings.listen_address, grpc_port),
        cors_origins=tuple(o.rstrip("/") for o in settings.web_cors_origins),
        console=settings.web_console,
        trace_url=settings.web_trace_url,
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        grpc_tls=settings.peer_client_tls if settings.server_tls is not None else None,
        forwarded_headers=tuple(forwarded),
        max_message_bytes=settings.max_message_bytes,
    )
