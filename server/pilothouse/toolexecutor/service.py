"""pilothouse.v1.ToolExecutorService over a `ToolRegistry` (grpc.aio).

Each call is traced (the server span is a child of the caller's span: the
runtime's `execute_tool`), logged once with its outcome and duration (never
its arguments), and measured when the servicer has metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import grpc

from pilothouse.auth import TOOL_EXECUTOR_POLICY, AuthChain, AuthInterceptor, Principal
from pilothouse.auth.audit import audit
from pilothouse.auth.principal import current_principal
from pilothouse.errors import InvalidArgumentError, NotFoundError, clip
from pilothouse.rpc.errors import handle_errors, rich_status
from pilothouse.rpc.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Keepalive,
    RunningServer,
    Service,
    start_server,
)
from pilothouse.rpc.tls import ServerTls
from pilothouse.toolexecutor.limits import TOOL_REQUEST_RULES
from pilothouse.toolexecutor.metrics import ToolExecutorMetrics
from pilothouse.toolexecutor.registry import Answer
from pilothouse.toolexecutor.sources import ServedTool, ToolSource
from pilothouse.v1 import (
    tool_executor_service_pb2 as pb,
    tool_executor_service_pb2_grpc as pb_grpc,
    tool_pb2,
)

__all__ = ["SERVICE_NAME", "ToolExecutorServicer", "serve_tools", "tool_to_proto"]

log = logging.getLogger(__name__)

#: Full name of the service, as health checking and reflection know it.
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ToolExecutorService"].full_name


def tool_to_proto(tool: ServedTool) -> tool_pb2.Tool:
    """The `pilothouse.v1.Tool` describing `tool`; the schema is compact
    JSON text."""
    return tool_pb2.Tool(
        name=tool.name,
        description=tool.description,
        parameters_json_schema=json.dumps(
            tool.parameters_schema, separators=(",", ":"), ensure_ascii=False
        ),
        metadata=dict(tool.metadata),
        idempotent=tool.flags.idempotent,
        read_only=tool.flags.read_only,
        destructive=tool.flags.destructive,
        requires_approval=tool.flags.requires_approval,
    )


class ToolExecutorServicer(pb_grpc.ToolExecutorServiceServicer):
    """Serves the tools of `registry` (a `ToolRegistry` or any other
    `ToolSource`, read at every call, so tools registered later are served
    too); `metrics` records each call."""

    def __init__(self, registry: ToolSource, metrics: ToolExecutorMetrics | None = None) -> None:
        self._registry = registry
        self._metrics = metrics

    @handle_errors
    async def ListTools(
        self, request: pb.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListToolsResponse:
        """Every tool, in the source's order (registration order for a
        `ToolRegistry`)."""
        return pb.ListToolsResponse(tools=[tool_to_proto(tool) for tool in self._registry])

    @handle_errors
    async def ExecuteTool(
        self, request: pb.ExecuteToolRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteToolResponse:
        """Run one call; the tool's failure is `error` with status OK.

        INVALID_ARGUMENT (BadRequest on "name") for an empty name; NOT_FOUND
        (ErrorInfo reason TOOL_NOT_FOUND, metadata "tool") for an unknown
        one. A tool still running when the deadline arrives is cancelled and
        the call ends DEADLINE_EXCEEDED. A tool that raises `AskUser` answers
        `question`; the runtime calls again with `answer`. A call cancelled by
        the client
        cancels the tool (asyncio.CancelledError in an async tool; a sync
        tool's thread runs on, its result discarded).
        """
        started = time.monotonic()
        outcome = "internal_error"
        if self._metrics is not None:
            self._metrics.active.add(1)
        try:
            if not request.name:
                outcome = "invalid_request"
                raise InvalidArgumentError.field("name", "must not be empty")
            tool = self._registry.get(request.name)
            if tool is None:
                outcome = "not_found"
                raise NotFoundError(
                    f"no tool named {clip(request.name)!r}",
                    reason="TOOL_NOT_FOUND",
                    metadata={"tool": request.name},
                )
            if not tool.flags.allows(request.principal, request.principal_roles):
                outcome = "permission_denied"
                caller = current_principal()
                audit(
                    "tool.refused",
                    Principal(
                        request.principal, frozenset(request.principal_roles), "runtime",
                        forwarded_by=caller.id if caller is not None else "",
                    ),
                    server="pilothouse-tools", tool=request.name, session_id=request.session_id,
                    run_id=request.run_id, peer=context.peer(),
                    detail="the tool is restricted to other principals or roles",
                )
                return pb.ExecuteToolResponse(
                    error=f"tool {request.name!r} may not run for this principal"
                )
            try:
                answer = (
                    Answer(tuple(request.answer.selected_options), request.answer.text)
                    if request.HasField("answer")
                    else None
                )
                remaining = _remaining(context)
                async with asyncio.timeout(remaining):
                    result = await tool.run(request.arguments_json, answer, timeout=remaining)
            except TimeoutError:
                outcome = "deadline_exceeded"
                await context.abort_with_status(
                    rich_status(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"tool {request.name!r} did not finish before the deadline",
                        "TOOL_DEADLINE_EXCEEDED",
                        {"tool": request.name},
                    )
                )
            outcome = result.outcome
            if result.question is not None:
                ask = result.question
                return pb.ExecuteToolResponse(
                    question=tool_pb2.Question(
                        question=ask.question, options=ask.options, multi_select=ask.multi_select
                    )
                )
            if result.error is not None:
                return pb.ExecuteToolResponse(error=result.error)
            return pb.ExecuteToolResponse(output=result.output or "")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            elapsed = time.monotonic() - started
            if self._metrics is not None:
                self._metrics.active.add(-1)
                self._metrics.record(request.name, outcome, elapsed)
            log.info(
                "tool call name=%s call_id=%s session_id=%s outcome=%s duration_ms=%.1f",
                request.name,
                request.call_id,
                request.session_id,
                outcome,
                elapsed * 1000,
                extra={
                    "tool": request.name,
                    "call_id": request.call_id,
                    "session_id": request.session_id,
                    "run_id": request.run_id,
                    "outcome": outcome,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None when there is none."""
    remaining = context.time_remaining()
    if remaining is None or not math.isfinite(remaining) or remaining > 10**7:
        return None
    return max(remaining, 0.0)


async def serve_tools(
    registry: ToolSource,
    address: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive: Keepalive | None = None,
    metrics: ToolExecutorMetrics | None = None,
    tracer_provider: Any = None,
    tls: ServerTls | None = None,
    auth: AuthChain | None = None,
    health_address: str = "",
) -> RunningServer:
    """Start a server on `address` ("host:port"; port 0 picks one) serving
    `registry` (a `ToolRegistry`, or `ToolSources` of several) as
    pilothouse.v1.ToolExecutorService, with health checking,
    reflection and tracing (`tracer_provider` None: the global one). With
    `tls` it serves TLS (mutual with a client CA); with `auth` every call
    but health and reflection must authenticate (UNAUTHENTICATED
    otherwise); with `health_address` health is also served in plaintext
    there. Raises RuntimeError if an address cannot be bound."""
    service = Service(
        pb_grpc.add_ToolExecutorServiceServicer_to_server,
        ToolExecutorServicer(registry, metrics),
        SERVICE_NAME,
    )
    return await start_server(
        [service],
        address,
        max_message_bytes=max_message_bytes,
        keepalive=keepalive,
        tracer_provider=tracer_provider,
        request_rules=TOOL_REQUEST_RULES,
        tls=tls,
        interceptors=(
            [AuthInterceptor(auth, TOOL_EXECUTOR_POLICY, "pilothouse-tools")] if auth else []
        ),
        health_address=health_address,
    )
