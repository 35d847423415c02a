"""The runtime's client of the ToolExecutors: discovers their tools at
start-up and again when an executor comes up, restarts or changes its
tools, and dispatches calls over gRPC.

Implements `pilothouse.runtime.tools.ToolDispatcher`: a call that fails for
any reason (executor down, deadline, unknown tool) becomes an error result
that the model reads; the run goes on. Cancelling the dispatching task
cancels the RPC, so the executor sees the cancellation.

Calls are traced: the channels carry OpenTelemetry's client interceptors,
so each ExecuteTool is a CLIENT span under the runtime's `execute_tool`
span (the dispatch runs inside it), and the executor's SERVER span is its
child. With `record_content`, the tool's arguments and result are set on
the `execute_tool` span (`gen_ai.tool.call.arguments` / `.result`).

Security: with `tls` the channels use TLS (and present the runtime's client
certificate to executors that require mutual TLS), re-opened when the
certificate files change; with `token` every call carries
`authorization: Bearer <token>`. Each ExecuteTool names the run's
principal and roles, so tools can authorise.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from pilothouse import jsontext
from pilothouse.errors import UnavailableError
from pilothouse.ops.telemetry import tracing_client_interceptors
from pilothouse.rpc.serving import channel_options
from pilothouse.rpc.tls import ClientChannels, ClientTls, is_loopback
from pilothouse.runtime.messages import ToolCall
from pilothouse.runtime.tools import (
    ToolAnswer,
    ToolCatalog,
    ToolContext,
    ToolOutcome,
    ToolQuestion,
    ToolSpec,
)
from pilothouse.v1 import tool_executor_service_pb2 as pb, tool_executor_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: The executors' service name, as their health service knows it.
EXECUTOR_SERVICE: str = pb.DESCRIPTOR.services_by_name["ToolExecutorService"].full_name

#: The default channel options (kept for callers that read them).
CHANNEL_OPTIONS = channel_options()


#: Answers of an executor that is up but refuses the runtime: a start-up error.
_REFUSALS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED}
)

#: How often the watcher looks at an executor's channel state, seconds.
STATE_POLL_S = 0.5

#: Reconnection backoff towards an executor that is down, so that one
#: coming up is seen within seconds (gRPC's default grows to 120 s).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass(slots=True)
class _Executor:
    """One executor address; its channel comes from the shared
    ClientChannels (new after a certificate change), its stub follows."""

    address: str
    channels: ClientChannels
    _channel: grpc.aio.Channel | None = None
    _stub: pb_grpc.ToolExecutorServiceAsyncStub | None = None

    #: The tools its last ListTools answer offered, by name.
    offered: dict[str, ToolSpec] = field(default_factory=dict)
    #: Whether its tools were listed since the channel last became READY.
    listed_since_ready: bool = False
    #: The last health check's verdict (None: not checked yet).
    serving: bool | None = None
    #: Whether its being unreachable has been logged since it last answered.
    reported_down: bool = False
    #: The status of its last failed ListTools (None after an answer).
    last_error: grpc.aio.AioRpcError | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.channels.get(self.address)

    @property
    def stub(self) -> pb_grpc.ToolExecutorServiceAsyncStub:
        channel = self.channel
        if channel is not self._channel or self._stub is None:
            self._channel, self._stub = channel, pb_grpc.ToolExecutorServiceStub(channel)
        return self._stub


class ToolExecutorClient:
    """Channels to the configured ToolExecutors, the tool → executor
    routing table and the `catalog` of their tools, kept up to date.
    `call_timeout` is the deadline of one call, seconds.

    Tools are listed at start-up (`discover`) and again (`watch`) whenever
    an executor's channel becomes READY after it was not (an executor that
    was absent at start, or restarted), when its health turns SERVING
    again, and every `rediscovery_interval` seconds: tools that appear are
    added to the catalog, tools that no executor offers any more are
    withdrawn (a call of one gets an error result). A name offered by
    several executors goes to the first in the configured order."""

    def __init__(
        self,
        addresses: list[str],
        *,
        call_timeout: float,
        max_message_bytes: int,
        keepalive_time_s: float = 30.0,
        keepalive_timeout_s: float = 10.0,
        lb_policy: str | None = None,
        record_content: bool = False,
        tracer_provider: Any = None,
        tls: ClientTls | None = None,
        token: str | None = None,
        catalog: ToolCatalog | None = None,
    ) -> None:
        options = channel_options(
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
            max_message_bytes=max_message_bytes,
            lb_policy=lb_policy,
        ) + RECONNECT_OPTIONS
        self.call_timeout = call_timeout
        self.record_content = record_content
        self._channels = ClientChannels(
            tls,
            options=options,
            interceptors=tracing_client_interceptors(tracer_provider),
            close_grace_s=call_timeout,
        )
        self._executors = [_Executor(a, self._channels) for a in addresses]
        self._routes: dict[str, _Executor] = {}
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if token and tls is None:
            for address in addresses:
                if not is_loopback(address):
                    log.warning("the ToolExecutor token goes to %s without TLS", address)
        self.catalog = catalog if catalog is not None else ToolCatalog()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def addresses(self) -> list[str]:
        return [e.address for e in self._executors]

    @property
    def unreachable(self) -> list[str]:
        """Executors whose tools have not been listed since they were last
        reachable."""
        return [e.address for e in self._executors if not e.listed_since_ready]

    async def check_health(self, timeout: float) -> None:
        """Ask every executor's health service about ToolExecutorService;
        raises UnavailableError naming the first that is not SERVING. An
        executor whose health turns SERVING again is asked for its tools."""

        async def check(executor: _Executor) -> None:
            stub = health_pb2_grpc.HealthStub(executor.channel)
            was = executor.serving
            executor.serving = False
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=EXECUTOR_SERVICE), timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise UnavailableError(
                    f"ToolExecutor at {executor.address}: {exc.code().name} {exc.details()}",
                    metadata={"address": executor.address},
                ) from exc
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                raise UnavailableError(
                    f"ToolExecutor at {executor.address} is "
                    f"{health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
                    metadata={"address": executor.address},
                )
            executor.serving = True
            if was is False:
                await self.refresh(executor)

        await asyncio.gather(*(check(e) for e in self._executors))

    async def discover(self, wait_seconds: float) -> ToolCatalog:
        """ListTools on every executor, waiting up to `wait_seconds` for each
        to come up, and return the catalog of their tools. An executor that
        does not answer is logged and left out (its tools are unavailable
        until it comes up: see `watch`). One that answers but refuses (the
        runtime's credentials, a wrong service) is a mistake of the
        configuration: UnavailableError naming it."""
        await asyncio.gather(*(self.refresh(e, wait_seconds) for e in self._executors))
        for executor in self._executors:
            error = executor.last_error
            if error is not None and error.code() in _REFUSALS:
                raise UnavailableError(
                    f"ToolExecutor at {executor.address} did not answer ListTools: "
                    f"{error.code().name}: {error.details()}",
                    metadata={"address": executor.address},
                )
        return self.catalog

    async def refresh(self, executor: _Executor, wait_seconds: float | None = None) -> bool:
        """List `executor`'s tools again and update the routes and the
        catalog; False (logged) when it did not answer. With
        `wait_seconds`, wait that long for it to come up."""
        try:
            reply = await executor.stub.ListTools(
                pb.ListToolsRequest(),
                timeout=wait_seconds or self.call_timeout,
                wait_for_ready=wait_seconds is not None,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            executor.last_error = exc
            if not executor.reported_down:  # once per outage, not every interval
                executor.reported_down = True
                log.warning(
                    "ToolExecutor %s did not answer ListTools (%s: %s): its tools are "
                    "unavailable until it does", executor.address, exc.code().name, exc.details(),
                )
            return False
        executor.reported_down = False
        executor.last_error = None
        offered: dict[str, ToolSpec] = {}
        for tool in reply.tools:
            spec = _spec_of(tool, executor.address)
            if spec is not None:
                offered[spec.name] = spec
        if offered.keys() != executor.offered.keys() or not executor.listed_since_ready:
            log.info("ToolExecutor %s offers %d tools", executor.address, len(offered))
        executor.offered = offered
        executor.listed_since_ready = True
        self._reroute()
        return True

    def _reroute(self) -> None:
        """Routes and catalog from every executor's last answer."""
        routes: dict[str, _Executor] = {}
        for executor in self._executors:
            for name, spec in executor.offered.items():
                if name in routes:
                    if self._routes.get(name) is not executor:
                        log.debug("tool %s offered by %s too; using %s",
                                  name, executor.address, routes[name].address)
                    continue
                routes[name] = executor
                self.catalog.register(spec)
        for name in set(self._routes) - set(routes):
            log.warning("tool %s is no longer offered by any ToolExecutor", name)
            self.catalog.withdraw(name)
        self._routes = routes

    def watch(self, interval_s: float) -> None:
        """Keep the catalog up to date in the background (see the class
        docstring) until `close`."""
        for executor in self._executors:
            task = asyncio.create_task(self._watch(executor, interval_s), name="tools-watch")
            self._watchers.append(task)

    async def _watch(self, executor: _Executor, interval_s: float) -> None:
        # The channel's state is polled (a cheap local read) rather than
        # awaited with wait_for_state_change, which keeps a call pending in
        # gRPC's threads for good.
        poll_s = min(STATE_POLL_S, interval_s)
        loop = asyncio.get_running_loop()
        next_listing = loop.time() + interval_s
        while True:
            try:
                await asyncio.sleep(poll_s)
                state = executor.channel.get_state(try_to_connect=True)
                if state is not grpc.ChannelConnectivity.READY:
                    executor.listed_since_ready = False
                elif not executor.listed_since_ready or loop.time() >= next_listing:
                    await self.refresh(executor)
                    next_listing = loop.time() + interval_s
                if loop.time() >= next_listing:  # down: try again every interval
                    await self.refresh(executor)
                    next_listing = loop.time() + interval_s
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any surprise
                log.exception("watching ToolExecutor %s failed", executor.address)
                await asyncio.sleep(interval_s)

    async def dispatch(
        self, call: ToolCall, context: ToolContext, answer: ToolAnswer | None = None
    ) -> ToolOutcome:
        """Run one call on the executor that offers it (with the user's
        `answer` when the tool asked a question); never raises but for
        cancellation."""
        executor = self._routes.get(call.name)
        if executor is None:
            return ToolOutcome(error=f"tool {call.name!r} is offered by no ToolExecutor now")
        request = pb.ExecuteToolRequest(
            call_id=call.id,
            name=call.name,
            arguments_json=call.arguments or "{}",
            agent=context.agent,
            sender=context.sender,
            session_id=context.session_id,
            run_id=context.run_id,
            principal=context.principal,
            principal_roles=context.principal_roles,
        )
        if answer is not None:
            request.answer.selected_options.extend(answer.selected_options)
            request.answer.text = answer.text
        span = trace.get_current_span()
        if self.record_content and span.is_recording():
            span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS, request.arguments_json)
        try:
            reply = await executor.stub.ExecuteTool(
                request, timeout=self.call_timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            return ToolOutcome(error=_describe_failure(call.name, executor.address, exc, self.call_timeout))
        kind = reply.WhichOneof("outcome")
        if kind == "question":
            ask = reply.question
            return ToolOutcome(
                question=ToolQuestion(ask.question, tuple(ask.options), ask.multi_select)
            )
        if kind == "error":
            outcome = ToolOutcome(error=reply.error)
        else:
            outcome = ToolOutcome(output=reply.output)
        if self.record_content and span.is_recording():
            span.set_attribute(
                gen_ai.GEN_AI_TOOL_CALL_RESULT,
                outcome.output if outcome.error is None else outcome.error,
            )
        return outcome

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        await self._channels.close()


def _spec_of(tool: Any, address: str) -> ToolSpec | None:
    """The runtime's spec of a listed tool; None (logged) when its schema is
    not a JSON object."""
    try:
        parameters = jsontext.loads(tool.parameters_json_schema or "{}")
    except ValueError:
        log.warning("tool %s from %s has an invalid JSON Schema; skipped", tool.name, address)
        return None
    if not isinstance(parameters, dict):
        log.warning("tool %s from %s: schema is not an object; skipped", tool.name, address)
        return None
    return ToolSpec(
        tool.name,
        tool.description,
        parameters,
        dict(tool.metadata),
        idempotent=tool.idempotent,
        read_only=tool.read_only,
        destructive=tool.destructive,
        requires_approval=tool.requires_approval
        or tool.metadata.get("requires_approval", "").lower() == "true",
    )


def _describe_failure(name: str, address: str, exc: grpc.aio.AioRpcError, timeout: float) -> str:
    code = exc.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"tool {name!r} timed out after {timeout:g}s"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"tool {name!r} failed: the ToolExecutor at {address} is unavailable ({exc.details()})"
    return f"tool {name!r} failed: {code.name}: {exc.details()}"
