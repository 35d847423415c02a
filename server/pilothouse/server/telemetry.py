"""OpenTelemetry set-up for the server processes, configured the standard
way: `OTEL_TRACES_EXPORTER` (`console`, `otlp`, `none`),
`OTEL_EXPORTER_OTLP_ENDPOINT` (implies `otlp`), `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER` (read by the SDK). Nothing is exported by default.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

log = logging.getLogger(__name__)


def configure_tracing(default_service_name: str) -> TracerProvider:
    """Install and return the global tracer provider."""
    name = os.environ.get("OTEL_SERVICE_NAME", default_service_name)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    exporters = [
        e.strip()
        for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if e.strip() and e.strip() != "none"
    ]
    if not exporters and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporters = ["otlp"]
    for exporter in exporters:
        if exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning(
                    "OTLP export requested but opentelemetry-exporter-otlp-proto-grpc is "
                    "not installed; spans are not exported"
                )
                continue
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", exporter)
    trace.set_tracer_provider(provider)
    return provider
