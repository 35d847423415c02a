"""The metrics pipeline both servers share: an OpenTelemetry meter provider
with a Prometheus reader (served on `GET /metrics` by prometheus_client's
own HTTP server) and, when configured, OTLP or console push readers.

Each server defines its instruments in its own module
(`pilothouse.app.metrics`, `pilothouse.toolexecutor.metrics`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

METER_NAME = "pilothouse"

#: Seconds, for runs and tool calls (a run may take minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

#: Attribute names shared by both servers' instruments.
TOOL_OUTCOME = "pilothouse.tool.outcome"
ERROR_TYPE = "error.type"


def histogram(meter: Meter, name: str, unit: str, description: str, buckets: Iterable[float]):
    """A histogram with explicit bucket boundaries (in `unit`)."""
    return meter.create_histogram(
        name, unit=unit, description=description,
        explicit_bucket_boundaries_advisory=list(buckets),
    )


# --- The pipeline: provider, Prometheus endpoint, OTLP ---------------------


def metric_readers_from_env() -> list[MetricReader]:
    """Push readers `OTEL_METRICS_EXPORTER` asks for: `otlp` (also when
    unset and an OTLP endpoint is configured), `console`; `prometheus` and
    `none` add nothing here (the Prometheus reader is always present)."""
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_METRICS_EXPORTER", "").split(",")
        if n.strip()
    ]
    if not names and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    ):
        names = ["otlp"]
    readers: list[MetricReader] = []
    for name in names:
        if name in {"none", "prometheus"}:
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        else:
            log.warning("unknown OTEL_METRICS_EXPORTER %r ignored", name)
    return readers


@dataclass(slots=True)
class MetricsPipeline:
    """A meter provider with a Prometheus reader on its own registry and,
    when `port` was not 0, the HTTP endpoint serving it (`port` is then the
    bound port, else 0)."""

    provider: MeterProvider
    registry: CollectorRegistry
    host: str = ""
    port: int = 0
    _http: Any = None

    def meter(self, name: str = METER_NAME) -> Meter:
        return self.provider.get_meter(name)

    def scrape(self) -> str:
        """The Prometheus text exposition, as a scrape would get it."""
        return generate_latest(self.registry).decode()

    async def shutdown(self) -> None:
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self.provider.shutdown()


async def start_metrics(
    resource: Resource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    readers: Iterable[MetricReader] | None = None,
) -> MetricsPipeline:
    """Build the meter provider (Prometheus reader plus `readers`, by
    default those of the environment) and serve `GET /metrics` on
    host:port unless `port` is 0 (prometheus_client's threaded HTTP server,
    off the event loop). A port that cannot be bound is logged as an error
    and leaves the endpoint off: metrics must not keep a server from
    serving."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=True)
    all_readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    all_readers += list(metric_readers_from_env() if readers is None else readers)
    # Exemplars are not exposed in Prometheus' text format; sampling them on
    # every histogram record costs CPU on the turn's path (make bench).
    provider = MeterProvider(
        resource=resource, metric_readers=all_readers, exemplar_filter=AlwaysOffExemplarFilter()
    )
    pipeline = MetricsPipeline(provider, registry)
    if port:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            log.error("metrics endpoint off: cannot listen on %s:%d: %s", host, port, exc)
        else:
            pipeline._http = (server, thread)
            pipeline.host = host
            pipeline.port = server.server_port
            log.info("metrics on http://%s:%d/metrics", host, pipeline.port)
    return pipeline
