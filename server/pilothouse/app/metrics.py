"""OpenTelemetry metrics of the runtime server, exposed through the shared
pipeline (`pilothouse.ops.metrics`: Prometheus scraping and, when
configured, OTLP).

Most runtime metrics are derived from the spans the runtime already makes
(`RuntimeMetrics.span_processor`): one place measures, traces and metrics
agree, and the runtime stays free of metric code. Unsampled spans are
recorded too (see `telemetry.RecordingSampler`), so sampling does not skew
the numbers. Gauges read the runtime's state when collected; events sent
are counted by a server interceptor.

Names (Prometheus spelling in brackets; histograms add `_bucket`, `_sum`,
`_count`, counters `_total`):

- `gen_ai.client.token.usage` [gen_ai_client_token_usage] by
  gen_ai.token.type (input, output), gen_ai.operation.name,
  gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model
- `gen_ai.client.operation.duration` s [gen_ai_client_operation_duration_seconds]:
  model rounds; error.type on failure (`ModelError`, `cancelled`)
- `gen_ai.client.operation.time_to_first_chunk` s: model time to first chunk
- `pilothouse.run.duration` s by gen_ai.agent.name and pilothouse.run.stop_reason
- `pilothouse.tool.duration` s by gen_ai.tool.name and pilothouse.tool.outcome
  (ok, error, cancelled)
- `pilothouse.runs.active`, `pilothouse.sessions.cached` (gauges),
  `pilothouse.runtime.draining` (0/1), `pilothouse.dependency.up` by
  pilothouse.dependency (1 reachable, 0 not)
- `pilothouse.events.sent` by rpc.method and pilothouse.event.type
- `pilothouse.run.steering_messages`, `pilothouse.run.cancellations`,
  `pilothouse.run.compactions` by gen_ai.agent.name;
  `pilothouse.tool.approval_decisions` by gen_ai.tool.name and pilothouse.verdict
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.attributes.rpc_attributes import RPC_GRPC_STATUS_CODE
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.trace import SpanKind, StatusCode

from pilothouse.ops.metrics import DURATION_BUCKETS, ERROR_TYPE, TOOL_OUTCOME, histogram

log = logging.getLogger(__name__)

RUNTIME_SCOPE = "pilothouse.runtime"
#: The GenAI semantic conventions' advice for operation durations.
GENAI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
#: The GenAI semantic conventions' advice for time to first chunk.
TTFC_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
#: The GenAI semantic conventions' advice for token counts.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)

STOP_REASON = "pilothouse.run.stop_reason"
EVENT_TYPE = "pilothouse.event.type"
RPC_METHOD = "rpc.method"
DEPENDENCY = "pilothouse.dependency"


# --- Runtime metrics -------------------------------------------------------


class RuntimeMetrics:
    """The runtime's instruments. Feed them with `span_processor()` (added
    to the tracer provider), `observe(runtime)` and `event_interceptor()`."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.token_usage = histogram(
            meter, gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE, "{token}",
            "Number of input and output tokens used.", TOKEN_BUCKETS,
        )
        self.operation_duration = histogram(
            meter, gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION, "s",
            "GenAI operation duration.", GENAI_DURATION_BUCKETS,
        )
        self.time_to_first_chunk = histogram(
            meter, gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "s",
            "Time from the model request to the first chunk of its stream.", TTFC_BUCKETS,
        )
        self.run_duration = histogram(
            meter, "pilothouse.run.duration", "s",
            "Duration of a run, from start to stored history, by stop reason.", DURATION_BUCKETS,
        )
        self.tool_duration = histogram(
            meter, "pilothouse.tool.duration", "s",
            "Duration of a tool call as the runtime sees it (approval waits included).",
            DURATION_BUCKETS,
        )
        self.events_sent = meter.create_counter(
            "pilothouse.events.sent", unit="{event}",
            description="Run events sent to clients on streaming RPCs.",
        )
        self.steering = meter.create_counter(
            "pilothouse.run.steering_messages", unit="{message}",
            description="Steering messages applied to runs.",
        )
        self.cancellations = meter.create_counter(
            "pilothouse.run.cancellations", unit="{run}", description="Runs that ended cancelled."
        )
        self.compactions = meter.create_counter(
            "pilothouse.run.compactions", unit="{compaction}",
            description="Automatic history compactions during runs.",
        )
        self.approvals = meter.create_counter(
            "pilothouse.tool.approval_decisions", unit="{decision}",
            description="Decisions on tool calls that needed approval, by verdict.",
        )
        self._processor = SpanMetricsProcessor(self)

    # Gauges over live state ------------------------------------------------

    def observe(
        self,
        *,
        active_runs: Callable[[], int],
        cached_sessions: Callable[[], int],
        draining: Callable[[], bool],
        dependencies: Callable[[], Mapping[str, bool]] = dict,
    ) -> None:
        """Register the gauges; the callables are read at each collection."""

        def gauge(name: str, unit: str, description: str, read: Callable[[], Any]) -> None:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(int(read()))]

            self.meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        gauge("pilothouse.runs.active", "{run}", "Runs active or queued in this process.", active_runs)
        gauge("pilothouse.sessions.cached", "{session}", "Session histories cached in memory.",
              cached_sessions)
        gauge("pilothouse.runtime.draining", "1", "1 while the server drains for shutdown.",
              draining)

        def deps(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(up), {DEPENDENCY: name}) for name, up in dependencies().items()]

        self.meter.create_observable_gauge(
            "pilothouse.dependency.up", callbacks=[deps], unit="1",
            description="1 when the dependency answered its last health check, else 0.",
        )

    def span_processor(self) -> SpanMetricsProcessor:
        return self._processor

    def event_interceptor(self) -> EventCountingInterceptor:
        return EventCountingInterceptor(self.events_sent.add)

    def close(self) -> None:
        """Stop deriving metrics from spans (the processor stays attached
        to the tracer provider, which cannot remove it)."""
        self._processor.enabled = False


class SpanMetricsProcessor(SpanProcessor):
    """Records `RuntimeMetrics` from the runtime's finished spans:
    `invoke_agent` (runs), `chat` (model rounds) and `execute_tool`."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics
        self.enabled = True
        # Spans whose ExecuteTool RPC was cancelled (CLIENT span children
        # end before their parent): their execute_tool span is "cancelled".
        self._cancelled_parents: OrderedDict[int, None] = OrderedDict()

    def on_end(self, span: ReadableSpan) -> None:
        if not self.enabled:
            return
        try:
            self._record(span)
        except Exception:  # metrics must never break a run
            log.exception("recording metrics from span %s failed", span.name)

    def _record(self, span: ReadableSpan) -> None:
        attrs = span.attributes or {}
        if span.kind is SpanKind.CLIENT and attrs.get(RPC_GRPC_STATUS_CODE) == (
            grpc.StatusCode.CANCELLED.value[0]
        ):
            if span.parent is not None:
                self._cancelled_parents[span.parent.span_id] = None
                while len(self._cancelled_parents) > 1024:
                    self._cancelled_parents.popitem(last=False)
            return
        scope = span.instrumentation_scope
        if scope is None or scope.name != RUNTIME_SCOPE:
            return
        if span.start_time is None or span.end_time is None:
            return
        seconds = (span.end_time - span.start_time) / 1e9
        operation = attrs.get(gen_ai.GEN_AI_OPERATION_NAME)
        events = [e.name for e in span.events]
        if operation == gen_ai.GenAiOperationNameValues.CHAT.value:
            self._chat(span, attrs, seconds, events)
        elif operation == gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value:
            self._tool(span, attrs, seconds)
        elif operation == gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value:
            self._run(attrs, seconds, events)

    def _chat(self, span: ReadableSpan, attrs, seconds: float, events: list[str]) -> None:
        m = self.metrics
        labels = {
            key: attrs[key]
            for key in (
                gen_ai.GEN_AI_OPERATION_NAME,
                gen_ai.GEN_AI_PROVIDER_NAME,
                gen_ai.GEN_AI_REQUEST_MODEL,
                gen_ai.GEN_AI_RESPONSE_MODEL,
            )
            if key in attrs
        }
        outcome = dict(labels)
        if "cancelled" in events:
            outcome[ERROR_TYPE] = "cancelled"
        elif span.status.status_code is StatusCode.ERROR:
            outcome[ERROR_TYPE] = "ModelError"
        m.operation_duration.record(seconds, outcome)
        for key, kind in (
            (gen_ai.GEN_AI_USAGE_INPUT_TOKENS, gen_ai.GenAiTokenTypeValues.INPUT.value),
            (gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, "output"),
        ):
            if key in attrs:
                m.token_usage.record(int(attrs[key]), {**labels, gen_ai.GEN_AI_TOKEN_TYPE: kind})
        ttfc = attrs.get(gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK)
        if ttfc is None and "pilothouse.time_to_first_chunk_ms" in attrs:
            ttfc = float(attrs["pilothouse.time_to_first_chunk_ms"]) / 1000
        if ttfc is not None:
            m.time_to_first_chunk.record(float(ttfc), labels)

    def _tool(self, span: ReadableSpan, attrs, seconds: float) -> None:
        m = self.metrics
        name = attrs.get(gen_ai.GEN_AI_TOOL_NAME, "")
        if span.context.span_id in self._cancelled_parents:
            del self._cancelled_parents[span.context.span_id]
            outcome = "cancelled"
        elif any(e.name == "cancelled" for e in span.events):
            outcome = "cancelled"
        elif span.status.status_code is StatusCode.ERROR:
            outcome = "error"
        else:
            outcome = "ok"
        m.tool_duration.record(seconds, {gen_ai.GEN_AI_TOOL_NAME: name, TOOL_OUTCOME: outcome})
        for event in span.events:
            if event.name == "approval_decided":
                verdict = (event.attributes or {}).get("pilothouse.verdict", "")
                m.approvals.add(1, {gen_ai.GEN_AI_TOOL_NAME: name, "pilothouse.verdict": verdict})

    def _run(self, attrs, seconds: float, events: list[str]) -> None:
        m = self.metrics
        agent = {gen_ai.GEN_AI_AGENT_NAME: attrs.get(gen_ai.GEN_AI_AGENT_NAME, "")}
        stop = attrs.get(STOP_REASON) or ("cancelled" if "cancelled" in events else "unknown")
        m.run_duration.record(seconds, {**agent, STOP_REASON: stop})
        if stop == "cancelled":
            m.cancellations.add(1, agent)
        steered = events.count("user_steered")
        if steered:
            m.steering.add(steered, agent)
        compacted = events.count("compacted")
        if compacted:
            m.compactions.add(compacted, agent)


# --- Events sent -----------------------------------------------------------


class EventCountingInterceptor(grpc.aio.ServerInterceptor):
    """Counts the run events streaming RPCs send (responses with an
    `event` field holding an `AgentEvent`), by method and event type; the
    counts of a stream are recorded when it ends."""

    def __init__(self, add: Callable[[int, dict[str, str]], None]) -> None:
        self._add = add

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
        if not inspect.isasyncgenfunction(behavior):  # e.g. health Watch writes via context
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        add = self._add

        def wrap(behavior):
            async def counted(request_or_iterator, context) -> AsyncIterator[Any]:
                # Counted locally and added once per event type when the
                # stream ends: a metrics call per streamed event is a
                # measurable share of the relay's CPU (make bench).
                counts: dict[str, int] = {}
                try:
                    async for response in behavior(request_or_iterator, context):
                        event = getattr(response, "event", None)
                        kind = event.WhichOneof("event") if event is not None else None
                        if kind:
                            counts[kind] = counts.get(kind, 0) + 1
                        yield response
                finally:
                    for kind, count in counts.items():
                        add(count, {RPC_METHOD: method, EVENT_TYPE: kind})

            return counted

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                wrap(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
