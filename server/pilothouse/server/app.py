"""Assemble and start the runtime server: model provider, ToolExecutor
client, session store, agents, and the gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pilothouse.errors import PilothouseError
from pilothouse.rpc.serving import RunningServer, Service, start_server
from pilothouse.runtime.model.openai import OpenAIChatModel
from pilothouse.runtime.runtime import Runtime, RuntimeLimits
from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.memory import MemorySessionStore
from pilothouse.server.agents_file import read_agents_file
from pilothouse.server.services import AgentService, RunService, SessionService
from pilothouse.server.settings import TEST_MODEL_NAME, Settings
from pilothouse.server.tool_client import ToolExecutorClient
from pilothouse.testmodel import start_scripted_model
from pilothouse.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says why."""


@dataclass(slots=True)
class App:
    """A running runtime server and what it owns."""

    settings: Settings
    runtime: Runtime
    server: RunningServer
    tools: ToolExecutorClient
    model: OpenAIChatModel
    test_model_server: Any | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, stop accepting RPCs (in-flight ones get
        `grace` seconds), cancel what runs remain, close everything."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self.runtime.begin_drain()
        await self.server.drain(grace)
        await self.runtime.shutdown(0)
        await self.tools.close()
        await self.model.aclose()
        if self.test_model_server is not None:
            await self.test_model_server.stop()


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


async def start_app(settings: Settings) -> App:
    """Start everything `settings` describe. Raises StartupError with the
    cause when a ToolExecutor does not answer, the agents file is bad, or
    the address cannot be bound."""
    test_model_server = None
    if settings.uses_test_model:
        test_model_server, base_url = await start_scripted_model()
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
    model = OpenAIChatModel(
        base_url=base_url,
        api_key=settings.model_api_key.get_secret_value() if settings.model_api_key else None,
        connect_timeout=settings.model_connect_timeout,
        read_timeout=settings.model_read_timeout,
        max_retries=settings.model_max_retries,
        provider_name=settings.model_provider_name,
    )
    tools = ToolExecutorClient(
        settings.tool_executors,
        call_timeout=settings.tool_timeout,
        max_message_bytes=settings.max_message_bytes,
    )
    try:
        registry = await tools.discover(settings.tool_discovery_timeout)
        store = await open_session_store(settings)
        runtime = Runtime(
            model=model,
            default_model=default_model,
            dispatcher=tools,
            tools=registry,
            store=store,
            limits=RuntimeLimits(
                max_content_bytes=settings.max_content_bytes,
                lease_s=settings.run_lease,
                event_retention_s=settings.event_retention,
                decision_timeout_s=settings.decision_timeout,
                session_cache_size=settings.session_cache_size,
                generate_titles=settings.generate_titles,
            ),
        )
        await runtime.start()
        for config in read_agents_file(settings.agents_file):
            runtime.add_agent(config, source="file")
        server = await start_server(
            [
                Service(
                    agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
                    AgentService(runtime),
                    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
                ),
                Service(
                    session_service_pb2_grpc.add_SessionServiceServicer_to_server,
                    SessionService(runtime),
                    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
                ),
                Service(
                    run_service_pb2_grpc.add_RunServiceServicer_to_server,
                    RunService(runtime, settings.heartbeat_interval),
                    run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
                ),
            ],
            settings.listen_address,
            max_message_bytes=settings.max_message_bytes,
        )
    except (PilothouseError, RuntimeError, OSError) as exc:
        await tools.close()
        await model.aclose()
        if test_model_server is not None:
            await test_model_server.stop()
        message = exc.message if isinstance(exc, PilothouseError) else str(exc)
        raise StartupError(message) from exc
    log.info("pilothouse-server listening on port %d", server.port)
    return App(settings, runtime, server, tools, model, test_model_server)
