"""OpenTelemetry tracing for the server processes, configured the standard
way, and the gRPC interceptors that carry trace context across processes.

Environment (read here and by the SDK):

- `OTEL_TRACES_EXPORTER`: comma-separated `otlp`, `console`, `none`.
  Unset: `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, else nothing is exported.
- `OTEL_EXPORTER_OTLP_*`: endpoint, headers, protocol options of the OTLP
  gRPC exporter (read by the exporter).
- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`: the resource.
- `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: the sampler (read by
  the SDK). Metrics do not come from spans (`pilothouse.app.metrics`), so
  they count every run, model round and tool call whatever the sampling
  rate, and with no exporter at all no SDK tracer provider is installed.

Context propagation uses opentelemetry-instrumentation-grpc's aio
interceptors: the server interceptor makes a caller's `traceparent` the
parent of the RPC's server span (and so of the run it starts); the client
interceptors inject the current context into outgoing calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters as grpc_filters,
)
from opentelemetry.instrumentation.grpc._aio_client import UnaryUnaryAioClientInterceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.semconv._incubating.attributes.rpc_attributes import RPC_GRPC_STATUS_CODE
from opentelemetry.trace import Status, StatusCode

log = logging.getLogger(__name__)

#: gRPC services whose calls are not traced: probes and tooling, not work.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")


def exporters_from_env() -> list[SpanExporter]:
    """The span exporters `OTEL_TRACES_EXPORTER` and the OTLP endpoint ask
    for (unknown names are logged and skipped)."""
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip()
    ]
    if not names and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    return exporters


def resource_for(default_service_name: str) -> Resource:
    """The resource: `OTEL_SERVICE_NAME`, else `default_service_name`, over
    `OTEL_RESOURCE_ATTRIBUTES`."""
    name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    return Resource.create({SERVICE_NAME: name})


def installed_tracer_provider() -> TracerProvider | None:
    """The global SDK tracer provider, if one is installed."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def configure_tracing(
    default_service_name: str = "pilothouse-server",
    *,
    provider: TracerProvider | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider | None:
    """Install the global tracer provider (once per process) and return it.

    Without `provider`, one is built from the environment (resource,
    sampler, exporters; see the module docstring), but only when the
    environment names an exporter: with nothing to export to, no SDK
    provider is installed and spans cost next to nothing (OpenTelemetry's
    no-op tracer still carries an incoming trace context through to
    outgoing calls and log lines); None is returned then. `provider`
    injects one instead (tests); `exporter` is added to it with a
    SimpleSpanProcessor (e.g. an InMemorySpanExporter). When an SDK
    provider is already installed, that one is kept and returned (with
    `exporter` added): the global provider can be set only once per
    process."""
    installed = installed_tracer_provider()
    if installed is not None:
        if provider is not None and provider is not installed:
            log.warning("a tracer provider is already installed; the injected one is not used")
        if exporter is not None:
            installed.add_span_processor(SimpleSpanProcessor(exporter))
        return installed
    if provider is None:
        exporters = exporters_from_env()
        if not exporters and exporter is None:
            return None
        provider = TracerProvider(resource=resource_for(default_service_name))
        for span_exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def add_span_processor(processor: SpanProcessor) -> bool:
    """Add `processor` to the installed SDK provider; False when tracing is
    not configured (no SDK provider installed)."""
    provider = installed_tracer_provider()
    if provider is None:
        return False
    provider.add_span_processor(processor)
    return True


def _untraced():
    return grpc_filters.any_of(
        *(
            grpc_filters.service_prefix(name)
            if name.endswith(".")
            else grpc_filters.service_name(name)
            for name in UNTRACED_SERVICES
        )
    )


def tracing_server_interceptor(tracer_provider: Any = None) -> grpc.aio.ServerInterceptor:
    """OpenTelemetry's aio server interceptor: one SERVER span per RPC, its
    parent the caller's `traceparent`. `tracer_provider` None: the global
    one (looked up when spans start)."""
    return aio_server_interceptor(
        tracer_provider=tracer_provider, filter_=grpc_filters.negate(_untraced())
    )


def tracing_client_interceptors(tracer_provider: Any = None) -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's aio client interceptors (one CLIENT span per call,
    the current context injected as `traceparent`), health checks left
    out; the unary-unary one is replaced by `CancellingUnaryUnaryInterceptor`."""
    interceptors = aio_client_interceptors(
        tracer_provider=tracer_provider, filter_=grpc_filters.negate(_untraced())
    )
    return [
        CancellingUnaryUnaryInterceptor.replacing(i)
        if type(i) is UnaryUnaryAioClientInterceptor
        else i
        for i in interceptors
    ]


class CancellingUnaryUnaryInterceptor(UnaryUnaryAioClientInterceptor):
    """The upstream unary-unary interceptor awaits the call's status in its
    own task: when the caller is cancelled (a run cancelled during a tool
    call), that await is cancelled but the RPC is not, so the executor never
    hears of it, and the CLIENT span is never ended. This one cancels the
    RPC and ends the span (ERROR, grpc status CANCELLED)."""

    @classmethod
    def replacing(cls, upstream: UnaryUnaryAioClientInterceptor) -> UnaryUnaryAioClientInterceptor:
        """The same interceptor (tracer, filter, hooks) with the fix."""
        if not hasattr(upstream, "_wrap_unary_response"):  # upstream changed: keep it
            return upstream
        fixed = cls.__new__(cls)
        fixed.__dict__.update(upstream.__dict__)
        return fixed

    async def _wrap_unary_response(
        self, continuation: Callable[[], Awaitable[grpc.aio.Call]], span: trace.Span
    ) -> grpc.aio.Call:
        calls: list[grpc.aio.Call] = []

        async def start() -> grpc.aio.Call:
            call = await continuation()
            calls.append(call)
            return call

        try:
            return await super()._wrap_unary_response(start, span)
        except asyncio.CancelledError:
            for call in calls:
                call.cancel()
            span.set_attribute(RPC_GRPC_STATUS_CODE, grpc.StatusCode.CANCELLED.value[0])
            span.set_status(Status(StatusCode.ERROR, "cancelled by the caller"))
            span.end()
            raise
