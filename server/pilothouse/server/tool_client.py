"""The runtime's client of the ToolExecutors: discovers their tools at
start-up (seed 000 `on_register_tools`) and dispatches calls over gRPC.

Implements `pilothouse.runtime.tools.ToolDispatcher`: a call that fails for
any reason (executor down, deadline, unknown tool) becomes an error result
that the model reads; the run goes on. Cancelling the dispatching task
cancels the RPC, so the executor sees the cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import grpc

from pilothouse.errors import UnavailableError
from pilothouse.runtime.messages import ToolCall
from pilothouse.runtime.tools import ToolContext, ToolOutcome, ToolRegistry, ToolSpec
from pilothouse.v1 import tool_executor_service_pb2 as pb, tool_executor_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(slots=True)
class _Executor:
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.ToolExecutorServiceStub


class ToolExecutorClient:
    """Channels to the configured ToolExecutors and the tool → executor
    routing table. `call_timeout` is the deadline of one call, seconds."""

    def __init__(
        self, addresses: list[str], *, call_timeout: float, max_message_bytes: int
    ) -> None:
        options = [
            *CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.call_timeout = call_timeout
        self._executors = [
            _Executor(a, ch := grpc.aio.insecure_channel(a, options=options), pb_grpc.ToolExecutorServiceStub(ch))
            for a in addresses
        ]
        self._routes: dict[str, _Executor] = {}

    async def discover(self, wait_seconds: float) -> ToolRegistry:
        """ListTools on every executor (waiting up to `wait_seconds` for each
        to come up) and return the registry of their tools. A name offered
        twice goes to the first executor; a tool whose schema is not a JSON
        object is skipped with a warning. Raises UnavailableError naming an
        executor that did not answer."""
        registry = ToolRegistry()
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
                registry.register(ToolSpec(tool.name, tool.description, parameters, dict(tool.metadata)))
                self._routes[tool.name] = executor
            log.info("ToolExecutor %s offers %d tools", executor.address, len(reply.tools))
        return registry

    @staticmethod
    async def _list(executor: _Executor, wait_seconds: float) -> pb.ListToolsResponse:
        return await executor.stub.ListTools(
            pb.ListToolsRequest(), timeout=wait_seconds, wait_for_ready=True
        )

    async def dispatch(self, call: ToolCall, context: ToolContext) -> ToolOutcome:
        """Run one call on the executor that offers it; never raises but for
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
        )
        try:
            reply = await executor.stub.ExecuteTool(request, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            return ToolOutcome(error=_describe_failure(call.name, executor.address, exc, self.call_timeout))
        if reply.WhichOneof("outcome") == "error":
            return ToolOutcome(error=reply.error)
        return ToolOutcome(output=reply.output)

    async def close(self) -> None:
        for executor in self._executors:
            await executor.channel.close()


def _describe_failure(name: str, address: str, exc: grpc.aio.AioRpcError, timeout: float) -> str:
    code = exc.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"tool {name!r} timed out after {timeout:g}s"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"tool {name!r} failed: the ToolExecutor at {address} is unavailable ({exc.details()})"
    return f"tool {name!r} failed: {code.name}: {exc.details()}"
