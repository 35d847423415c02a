"""Assemble and start the runtime server: model provider, ToolExecutor
client, session store, agents, the gRPC server, and its operations side:
tracing, metrics, health monitoring and the graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pilothouse.adapters.content import ContentRecordingModel
from pilothouse.adapters.forwarding import RunForwarder
from pilothouse.adapters.tool_executor_client import ToolExecutorClient
from pilothouse.app.agents_file import read_agents_file
from pilothouse.app.file_agents import FileAgents
from pilothouse.app.health import Dependency, HealthMonitor
from pilothouse.app.metrics import RuntimeMetrics
from pilothouse.app.models import ProviderConfigError, build_router
from pilothouse.app.plugins import PluginError, load_hooks
from pilothouse.app.security import Security, SecurityError, prepare_security
from pilothouse.app.settings import TEST_MODEL_NAME, Settings
from pilothouse.app.workers import WorkerRole, join_host_port, split_host_port
from pilothouse.auth.audit import audit
from pilothouse.errors import PilothouseError
from pilothouse.handlers.agents import AgentService
from pilothouse.handlers.events import EventService
from pilothouse.handlers.limits import RUNTIME_REQUEST_RULES
from pilothouse.handlers.runs import RunService
from pilothouse.handlers.sessions import SessionService
from pilothouse.ops import eventloop
from pilothouse.ops.metrics import MetricsPipeline, start_metrics
from pilothouse.ops.sockets import share_ports
from pilothouse.ops.telemetry import (
    configure_tracing,
    resource_for,
    tracing_client_interceptors,
)
from pilothouse.rpc.serving import RunningServer, Service, start_server
from pilothouse.runtime.events import StopReason
from pilothouse.runtime.hookchain import HookChain
from pilothouse.runtime.model.router import ModelRouter
from pilothouse.runtime.runtime import ResumePolicy, Runtime, RuntimeLimits
from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.memory import MemorySessionStore
from pilothouse.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)
from pilothouse.web import prepare_web_port

if TYPE_CHECKING:
    from pilothouse.a2a import A2AGateway
    from pilothouse.web.server import WebServer

log = logging.getLogger(__name__)

SERVICE_NAME = "pilothouse-server"
AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
SESSION_SERVICE = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name
RUN_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
EVENT_SERVICE = event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
#: Seconds the streams get, once every run has ended, to deliver their last
#: events (`done`) before the server stops.
STREAM_GRACE_S = 5.0
#: Seconds cancelled runs get to store their history.
CANCEL_WAIT_S = 10.0
#: The session id the store's health probe reads (never a real session).
HEALTH_PROBE_SESSION = "__health__"


class StartupError(Exception):
    """The server cannot start; the message says why."""


class StandInModelServer(Protocol):
    """A model server started in-process when no endpoint is configured."""

    async def stop(self) -> None: ...


#: Starts a stand-in model server (the scripted test model, from the entry
#: point or the dev stack) and returns it with its OpenAI-compatible base URL.
StandInModelStarter = Callable[[], Awaitable[tuple[StandInModelServer, str]]]


@dataclass(slots=True)
class App:
    """A running runtime server and what it owns."""

    settings: Settings
    runtime: Runtime
    server: RunningServer
    tools: ToolExecutorClient
    model: ModelRouter
    test_model_server: StandInModelServer | None = None
    metrics: MetricsPipeline | None = None
    runtime_metrics: RuntimeMetrics | None = None
    health: HealthMonitor | None = None
    forwarder: RunForwarder | None = None
    security: Security | None = None
    #: The web port (PILOTHOUSE_WEB_*), None when off.
    web: WebServer | None = None
    #: The A2A bindings (PILOTHOUSE_A2A_*), None when off.
    a2a: A2AGateway | None = None
    file_agents: FileAgents | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def web_port(self) -> int:
        """The bound web port (0: none)."""
        return self.web.port if self.web is not None else 0

    @property
    def metrics_port(self) -> int:
        """The bound Prometheus port (0: no endpoint)."""
        return self.metrics.port if self.metrics is not None else 0

    async def stop(self, grace: float | None = None, *, force: asyncio.Event | None = None) -> bool:
        """Drain and stop; returns True when every run finished in time.

        1. At once: every service's health NOT_SERVING (load balancers stop
           routing here) and new runs refused with UNAVAILABLE (DRAINING);
           other RPCs are still served.
        2. Active and queued runs get `grace` seconds (default
           `settings.shutdown_grace`) to finish and store their history.
        3. What still runs is handed over: stopped at a safe point, its
           state stored and its lease released, so another replica (or the
           next start) resumes it; its streams end with UNAVAILABLE
           (RUN_HANDED_OVER) and clients re-attach. `force` being set (a
           second SIGTERM) cuts the wait short and cancels instead (stop
           reason CANCELLED, history valid).
        4. Streams get up to STREAM_GRACE_S to deliver their last events,
           then the server stops and everything is closed.
        """
        if self._stopped:
            return True
        self._stopped = True
        grace = self.settings.shutdown_grace if grace is None else grace
        self.runtime.begin_drain()
        await self.server.enter_drain()
        if self.health is not None:
            await self.health.stop()
        active = self.runtime.active_runs()
        if active:
            log.info("draining: %d active run(s) get up to %gs to finish", len(active), grace)
        finished = await _first(self.runtime.wait_idle(grace), force)
        if not finished and not (force is not None and force.is_set()):
            remaining = len(self.runtime.active_runs())
            log.warning("handing over %d run(s) still active after the drain", remaining)
            await _first(self.runtime.hand_over(CANCEL_WAIT_S), force)
        if self.runtime.active_runs():
            remaining_runs = self.runtime.active_runs()
            log.warning("cancelling %d run(s) still active after the drain", len(remaining_runs))
            for run in remaining_runs:
                run.stop(StopReason.CANCELLED, "the server is shutting down")
            if not await self.runtime.wait_idle(CANCEL_WAIT_S):
                log.error("runs still active %gs after their cancellation", CANCEL_WAIT_S)
        # Every run has ended and published `done`: the streams deliver it
        # and end by themselves (the grace only bounds stuck clients).
        if self.a2a is not None:
            await self.a2a.stop()
        await self.server.stop(STREAM_GRACE_S)
        if self.web is not None:
            await self.web.stop(STREAM_GRACE_S)
        await self.runtime.hooks.close()  # after the last run, before the store closes
        await self.runtime.shutdown(0)
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.file_agents is not None:
            await self.file_agents.close()
        await self.tools.close()
        await self.model.aclose()
        if self.test_model_server is not None:
            await self.test_model_server.stop()
        if self.metrics is not None:
            await self.metrics.shutdown()
        return finished


async def _first(work, force: asyncio.Event | None) -> bool:
    """Await `work` (a coroutine or future giving a bool, or None) unless
    `force` is set first; False when forced."""
    task = asyncio.ensure_future(work)
    if force is None:
        result = await task
        return result is not False
    forced = asyncio.ensure_future(force.wait())
    try:
        await asyncio.wait({task, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
    if task.done():
        return task.result() is not False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def open_session_store(settings: Settings) -> SessionStore:
    """The store `settings.store_url` names, opened (schema migrated)."""
    if settings.store_url.startswith("memory:"):
        store: SessionStore = MemorySessionStore()
        await store.open()
        return store
    from pilothouse.runtime.store.factory import open_store

    try:
        return await open_store(settings.store_url, data_dir=settings.data_dir)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


async def start_app(
    settings: Settings,
    *,
    stand_in_model: StandInModelStarter | None = None,
    worker: WorkerRole | None = None,
) -> App:
    """Start everything `settings` describe. Raises StartupError with the
    cause when the agents file is bad, the address cannot be bound, or no
    model endpoint is configured and no `stand_in_model` is given. A
    ToolExecutor that does not answer within `tool_discovery_timeout` is
    logged and discovered when it comes up (its tools are unavailable until
    then; agents of the file that need them wait for them). With every
    executor answering, an agents file naming a tool none offers is a
    StartupError.

    As a `worker` of `pilothouse-server --workers`, the public ports are
    shared with the other workers (SO_REUSEPORT) and the worker's own port
    is served too and advertised (`advertised_address`).

    Tracing is configured from the environment unless a tracer provider is
    installed already (`telemetry.configure_tracing`); runs report their
    metrics to `RuntimeMetrics` directly, whether or not spans are made."""
    configure_tracing(SERVICE_NAME)
    if worker is not None:
        share_ports()
    metrics = await start_metrics(
        resource_for(SERVICE_NAME), host=settings.metrics_host, port=settings.metrics_port
    )
    runtime_metrics = RuntimeMetrics(metrics.meter())
    test_model_server = None
    tools: ToolExecutorClient | None = None
    model: ModelRouter | None = None
    store: SessionStore | None = None
    runtime: Runtime | None = None
    web: WebServer | None = None
    hooks: HookChain | None = None
    a2a: A2AGateway | None = None
    try:
        try:
            security = prepare_security(settings, SERVICE_NAME)
            web_plan = prepare_web_port(settings)
        except (SecurityError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        if settings.uses_test_model:
            if stand_in_model is None:
                raise StartupError(
                    "no model endpoint is configured: set PILOTHOUSE_MODEL_BASE_URL "
                    "(and PILOTHOUSE_MODEL)"
                )
            test_model_server, base_url = await stand_in_model()
            default_model = settings.model or TEST_MODEL_NAME
            log.warning(
                "no model endpoint configured (PILOTHOUSE_MODEL_BASE_URL): using the built-in "
                "scripted test model %r at %s",
                default_model,
                base_url,
            )
        else:
            base_url = settings.model_base_url or ""
            default_model = settings.model
            if not default_model:
                raise StartupError("PILOTHOUSE_MODEL must name the default model of the endpoint")
        try:
            model = build_router(settings, base_url, default_model)
        except ProviderConfigError as exc:
            raise StartupError(str(exc)) from exc
        tools = ToolExecutorClient(
            settings.tool_executors,
            call_timeout=settings.tool_timeout,
            max_message_bytes=settings.max_message_bytes,
            keepalive_time_s=settings.tool_keepalive_time,
            keepalive_timeout_s=settings.tool_keepalive_timeout,
            lb_policy=settings.tool_lb_policy,
            record_content=settings.record_content,
            tls=settings.tool_executors_client_tls,
            token=(
                settings.tool_executors_token.get_secret_value()
                if settings.tool_executors_token else None
            ),
        )
        registry = await tools.discover(settings.tool_discovery_timeout)
        store = await open_session_store(settings)
        hooks = await start_hooks(settings, store)
        runtime = Runtime(
            model=ContentRecordingModel(model) if settings.record_content else model,
            default_model=default_model,
            dispatcher=tools,
            tools=registry,
            store=store,
            limits=RuntimeLimits(
                max_content_bytes=settings.max_content_bytes,
                lease_s=settings.run_lease,
                event_retention_s=settings.event_retention,
                event_log_retention_s=settings.event_log_retention,
                event_flush_s=settings.event_flush_interval,
                resume_policy=ResumePolicy(settings.resume_policy),
                resume_poll_s=settings.resume_poll_interval,
                stream_retries=settings.model_stream_retries,
                approval_exempt_tools=frozenset(settings.approval_exempt_tools),
                max_output_chars=settings.max_output_chars,
                page_bytes=settings.max_message_bytes // 4,
                decision_timeout_s=settings.decision_timeout,
                session_cache_size=settings.session_cache_size,
                generate_titles=settings.generate_titles,
                delegation_max_depth=settings.delegation_max_depth,
                delegation_max_runs=settings.delegation_max_runs,
                subscription_poll_s=settings.subscription_poll_interval,
                subscription_buffer=settings.subscription_buffer,
            ),
            hooks=hooks,
            metrics=runtime_metrics,
        )
        tools.watch(settings.tool_rediscovery_interval)
        if settings.approval_exempt_tools:
            audit("approval.exempted", tools=",".join(sorted(settings.approval_exempt_tools)))
            log.warning(
                "PILOTHOUSE_APPROVAL_EXEMPT_TOOLS lifts the ToolExecutors' approval requirement of: %s",
                ", ".join(sorted(settings.approval_exempt_tools)),
            )
        forwarder = RunForwarder(
            max_message_bytes=settings.max_message_bytes,
            interceptors=tracing_client_interceptors(),
            tls=settings.peer_client_tls,
        )
        file_agents = FileAgents(runtime, registry, wait_for_tools=bool(tools.unreachable))
        await file_agents.register(read_agents_file(settings.agents_file))
        security.attach(runtime)
        a2a = a2a_gateway(settings, runtime, security)
        server = await start_server(
            [
                Service(
                    agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
                    AgentService(runtime),
                    AGENT_SERVICE,
                ),
                Service(
                    session_service_pb2_grpc.add_SessionServiceServicer_to_server,
                    SessionService(runtime),
                    SESSION_SERVICE,
                ),
                Service(
                    run_service_pb2_grpc.add_RunServiceServicer_to_server,
                    RunService(runtime, settings.heartbeat_interval, forwarder),
                    RUN_SERVICE,
                ),
                Service(
                    event_service_pb2_grpc.add_EventServiceServicer_to_server,
                    EventService(runtime.feed, settings.heartbeat_interval),
                    EVENT_SERVICE,
                ),
                *([a2a.grpc_service()] if a2a is not None and settings.a2a_grpc else []),
            ],
            settings.listen_address,
            max_message_bytes=settings.max_message_bytes,
            keepalive=settings.keepalive,
            interceptors=[*security.interceptors, runtime_metrics.event_interceptor()],
            tls=settings.server_tls,
            health_address=settings.health_listen_address,
            request_rules=RUNTIME_REQUEST_RULES,
            reuse_port=worker is not None,
            extra_addresses=[worker.address] if worker is not None else [],
        )
        own_port = server.extra_ports[0] if worker is not None else server.port
        if web_plan is not None:
            try:
                web = await web_plan.start(own_port)
            except BaseException:
                await server.stop(0)
                raise
        runtime.address = advertised_address(settings, own_port, worker)
        if a2a is not None:
            await start_a2a(a2a, settings, runtime.address)
        await runtime.start()  # takes over runs left by a crash or a drain
        health = HealthMonitor(
            server,
            dependencies_of(settings, store, tools),
            interval_s=settings.health_check_interval,
            timeout_s=settings.health_check_timeout,
        )
        runtime_metrics.observe(
            active_runs=lambda: len(runtime.active_runs()),
            cached_sessions=lambda: runtime.cached_sessions,
            draining=lambda: runtime.draining,
            dependencies=lambda: health.up,
        )
        await health.start()
    except (StartupError, PilothouseError, RuntimeError, OSError) as exc:
        if hooks is not None:
            await hooks.close()
        if a2a is not None:
            await a2a.stop()
        if web is not None:
            await web.stop(0)
        if runtime is not None:
            await runtime.shutdown(0)  # closes the store
        elif store is not None:
            await store.close()
        if tools is not None:
            await tools.close()
        if model is not None:
            await model.aclose()
        if test_model_server is not None:
            await test_model_server.stop()
        await metrics.shutdown()
        if isinstance(exc, StartupError):
            raise
        message = exc.message if isinstance(exc, PilothouseError) else str(exc)
        raise StartupError(message) from exc
    log.info(
        "pilothouse-server listening on port %d with %s, authentication %s, on %s (other "
        "replicas reach it at %s)%s",
        server.port, "TLS" if server.tls else "plaintext", ",".join(settings.auth),
        eventloop.running(), runtime.address,
        f"; health also on plaintext port {server.health_port}" if server.health_port else "",
    )
    if web is not None:
        log.info("browsers reach it at %s://%s:%d/ (Connect, gRPC-Web%s)",
                 "https" if web.tls else "http", web.host, web.port,
                 ", the web console" if settings.web_console else "")
    if settings.agents_file is not None and settings.agents_file_watch:
        file_agents.watch(settings.agents_file)
    return App(
        settings, runtime, server, tools, model, test_model_server, metrics, runtime_metrics,
        health, forwarder, security, web=web, a2a=a2a, file_agents=file_agents,
    )


async def start_hooks(settings: Settings, store: SessionStore) -> HookChain:
    """The hook plugins `settings.hooks` enables, started (each gets its
    durable state in `store`). StartupError when one cannot be loaded or
    fails to start."""
    try:
        hooks = load_hooks(settings.hooks, settings.hook_settings)
    except PluginError as exc:
        raise StartupError(str(exc)) from exc
    try:
        await hooks.start(store)
    except PilothouseError as exc:
        raise StartupError(exc.message) from exc
    return hooks


def a2a_gateway(settings: Settings, runtime: Runtime, security: Security) -> A2AGateway | None:
    """The A2A bindings the settings ask for (None: off), under the same
    per-principal limits as the gRPC API. StartupError when the a2a-sdk is
    not installed."""
    if not (settings.a2a_listen_address or settings.a2a_grpc):
        return None
    try:
        from pilothouse.a2a import A2AGateway
    except ImportError as exc:
        raise StartupError(
            f"A2A needs the a2a-sdk ({exc}): pip install 'pilothouse[a2a]'"
        ) from exc
    return A2AGateway(runtime, security.limiter)


async def start_a2a(a2a: A2AGateway, settings: Settings, grpc_address: str) -> None:
    """Start A2A's JSON-RPC port (when PILOTHOUSE_A2A_LISTEN_ADDRESS is
    set), with the runtime's authentication and TLS; the cards name the gRPC
    binding at `grpc_address` when PILOTHOUSE_A2A_GRPC is on. StartupError
    for an exposed port without authentication; OSError when the address
    cannot be bound."""
    from pilothouse.auth import build_chain, check_exposure

    if settings.a2a_grpc:
        a2a.grpc_address = grpc_address
    if not settings.a2a_listen_address:
        return
    try:
        check_exposure(settings, settings.a2a_listen_address, "pilothouse-a2a")
        chain = build_chain(settings)
    except (ValueError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    await a2a.start_http(
        settings.a2a_listen_address, chain, tls=settings.server_tls,
        public_url=settings.a2a_public_url, grace_s=STREAM_GRACE_S,
    )
    log.info("A2A JSON-RPC on %s (agents at %s/agents/<name>/)%s", settings.a2a_listen_address,
             a2a.public_url, "; gRPC binding on the runtime's port" if settings.a2a_grpc else "")


def advertised_address(settings: Settings, port: int, worker: WorkerRole | None = None) -> str:
    """How other replicas reach this one: PILOTHOUSE_ADVERTISE_ADDRESS, else
    the listen host (this host's name when it listens on every interface)
    with the bound port. A worker advertises its own port (`port`), with
    the host of PILOTHOUSE_ADVERTISE_ADDRESS when that is set."""
    if settings.advertise_address and worker is None:
        return settings.advertise_address
    if settings.advertise_address:
        return join_host_port(split_host_port(settings.advertise_address)[0], port)
    host = settings.listen_address.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def dependencies_of(
    settings: Settings, store: SessionStore, tools: ToolExecutorClient
) -> list[Dependency]:
    """The store (needed by SessionService and RunService) and the
    ToolExecutors (needed by RunService when
    `health_requires_tool_executors`, else only watched)."""

    async def probe_store() -> None:
        await store.get(HEALTH_PROBE_SESSION)

    async def probe_tools() -> None:
        await tools.check_health(settings.health_check_timeout)

    return [
        Dependency("session_store", probe_store, (SESSION_SERVICE, RUN_SERVICE, EVENT_SERVICE)),
        Dependency(
            "tool_executors",
            probe_tools,
            (RUN_SERVICE,) if settings.health_requires_tool_executors else (),
        ),
    ]
