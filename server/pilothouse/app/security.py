"""The runtime's security, assembled from its settings: the checks that
refuse an exposed server, the authentication and limits interceptors, and
the TLS files checked before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from pilothouse.app.settings import Settings
from pilothouse.auth import (
    RUNTIME_POLICY,
    AuthInterceptor,
    LimitsInterceptor,
    PrincipalLimiter,
    build_chain,
    check_exposure,
)
from pilothouse.rpc.tls import ClientTls, ServerTls, TlsFileError, read_ca, read_key_pair
from pilothouse.runtime.runtime import Runtime


class SecurityError(ValueError):
    """The security settings cannot be used; the message says why."""


@dataclass(slots=True)
class Security:
    """The interceptors to mount (authentication first) and the limiter
    that needs to hear about run ends."""

    interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    limiter: PrincipalLimiter | None = None

    def attach(self, runtime: Runtime) -> None:
        """Let the limiter follow `runtime`'s runs."""
        if self.limiter is not None:
            self.limiter.runs = _RuntimeRuns(runtime)
            limiter = self.limiter
            runtime.on_run_end.append(lambda run, response, duration: limiter.run_ended(run.id))


class _RuntimeRuns:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def is_local(self, run_id: str) -> bool:
        return any(run.id == run_id for run in self._runtime.active_runs())

    def active_run_id(self, session_id: str) -> str | None:
        run = self._runtime.active_run(session_id)
        return run.id if run is not None else None


def check_tls_files(server: ServerTls | None, *clients: ClientTls | None) -> None:
    """Load every configured TLS file once. Raises SecurityError."""
    try:
        if server is not None:
            read_key_pair(server.cert_file, server.key_file)
            if server.client_ca_file is not None:
                read_ca(server.client_ca_file)
        for client in clients:
            if client is not None:
                client.credentials()
    except TlsFileError as exc:
        raise SecurityError(str(exc)) from exc


def prepare_security(settings: Settings, server_name: str) -> Security:
    """Refuse an exposed server, check the TLS files, and build the
    interceptors. Raises SecurityError."""
    try:
        check_exposure(settings, settings.listen_address, server_name)
        chain = build_chain(settings)
    except (ValueError, OSError) as exc:
        raise SecurityError(str(exc)) from exc
    check_tls_files(
        settings.server_tls, settings.tool_executors_client_tls, settings.peer_client_tls
    )
    security = Security([AuthInterceptor(chain, RUNTIME_POLICY, server_name)])
    if settings.limits.enabled:
        security.limiter = PrincipalLimiter(settings.limits)
        security.interceptors.append(LimitsInterceptor(security.limiter, server_name))
    return security
