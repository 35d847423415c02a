"""The runtime's client of the ToolExecutors: discovers their tools at
start-up and dispatches calls over gRPC.

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
import json
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

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


@dataclass(slots=True)
class _Executor:
    """One executor address; its channel comes from the shared
    ClientChannels (new after a certificate change), its stub follows."""

    address: str
    channels: ClientChannels
    _channel: grpc.aio.Channel | None = None
    _stub: pb_grpc.ToolExecutorServiceAsyncStub | None = None

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
    """Channels to the configured ToolExecutors and the tool → executor
    routing table. `call_timeout` is the deadline of one call, seconds."""

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
    ) -> None:
        options = channel_options(
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
            max_message_bytes=max_message_bytes,
            lb_policy=lb_policy,
        )
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

    @property
    def addresses(self) -> list[str]:
        return [e.address for e in self._executors]

    async def check_health(self, timeout: float) -> None:
        """Ask every executor's health service about ToolExecutorService;
        raises UnavailableError naming the first that is not SERVING."""

        async def check(executor: _Executor) -> None:
            stub = health_pb2_grpc.HealthStub(executor.channel)
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

        await asyncio.gather(*(check(e) for e in self._executors))

    async def discover(self, wait_seconds: float) -> ToolCatalog:
        """ListTools on every executor (waiting up to `wait_seconds` for each
        to come up) and return the registry of their tools. A name offered
        twice goes to the first executor; a tool whose schema is not a JSON
        object is skipped with a warning. Raises UnavailableError naming an
        executor that did not answer."""
        registry = ToolCatalog()
        replies = await asyncio.gather(
            *(self._list(e, wait_seconds) for e in self._executors), return_exceptions=True
        )
        for executor, reply in zip(self._executors, replies, strict=True):
            if isinstance(reply, BaseException):
                raise UnavailableError(
                    f"ToolExecutor at {executor.address} did not answer ListTools: {reply}",
                    metadata={"address": executor.address},
                )
            for tool in reply.tools:
                if tool.name in registry:
                    log.warning(
                        "tool %s offered by %s too; using %s",
                        tool.name, executor.address, self._routes[tool.name].address,
                    )
                    continue
                try:
                    parameters = json.loads(tool.parameters_json_schema or "{}")
                except ValueError:
                    log.warning("tool %s from %s has an invalid JSON Schema; skipped", tool.name, executor.address)
                    continue
                if not isinstance(parameters, dict):
                    log.warning("tool %s from %s: schema is not an object; skipped", tool.name, executor.address)
                    continue
                registry.register(
                    ToolSpec(
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
                )
                self._routes[tool.name] = executor
            log.info("ToolExecutor %s offers %d tools", executor.address, len(reply.tools))
        return registry

    async def _list(self, executor: _Executor, wait_seconds: float) -> pb.ListToolsResponse:
        return await executor.stub.ListTools(
            pb.ListToolsRequest(), timeout=wait_seconds, wait_for_ready=True,
            metadata=self._metadata,
        )

    async def dispatch(
        self, call: ToolCall, context: ToolContext, answer: ToolAnswer | None = None
    ) -> ToolOutcome:
        """Run one call on the executor that offers it (with the user's
        `answer` when the tool asked a question); never raises but for
        cancellation."""
        executor = self._routes.get(call.name)
        if executor is None:
            return ToolOutcome(error=f"tool {call.name!r} is offered by no ToolExecutor")
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
        await self._channels.close()


def _describe_failure(name: str, address: str, exc: grpc.aio.AioRpcError, timeout: float) -> str:
    code = exc.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"tool {name!r} timed out after {timeout:g}s"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"tool {name!r} failed: the ToolExecutor at {address} is unavailable ({exc.details()})"
    return f"tool {name!r} failed: {code.name}: {exc.details()}"
