"""OpenTelemetry metrics of the runtime server, exposed through the shared
pipeline (`pilothouse.ops.metrics`: Prometheus scraping and, when
configured, OTLP).

The runtime reports each model round, tool call, approval decision and run
as it ends, through the `RunMetrics` interface it owns
(`pilothouse.runtime.runmetrics`), which `RuntimeMetrics` implements here:
the runtime stays free of OpenTelemetry metric code, the metrics count every
run whatever the trace sampling, and no span has to be recorded for them
(with nothing exporting traces, none is). Gauges read the runtime's state
when collected; events sent are counted by a server interceptor.

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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

from pilothouse.ops.metrics import DURATION_BUCKETS, ERROR_TYPE, TOOL_OUTCOME, histogram
from pilothouse.runtime.events import StopReason
from pilothouse.runtime.runmetrics import ModelRound

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
VERDICT = "pilothouse.verdict"
_CHAT = gen_ai.GenAiOperationNameValues.CHAT.value
_INPUT = gen_ai.GenAiTokenTypeValues.INPUT.value
_OUTPUT = gen_ai.GenAiTokenTypeValues.COMPLETION.value  # "output"


# --- Runtime metrics -------------------------------------------------------


class RuntimeMetrics:
    """The runtime's instruments. Runs feed them as the `RunMetrics` of the
    `Runtime` (`metrics=`); `observe(...)` registers the gauges and
    `event_interceptor()` counts the events streamed to clients."""

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

    def event_interceptor(self) -> EventCountingInterceptor:
        return EventCountingInterceptor(self.events_sent.add)

    # RunMetrics (pilothouse.runtime.runmetrics) -----------------------------

    def model_round(self, round_: ModelRound) -> None:
        labels = {gen_ai.GEN_AI_OPERATION_NAME: _CHAT, gen_ai.GEN_AI_PROVIDER_NAME: round_.provider,
                  gen_ai.GEN_AI_REQUEST_MODEL: round_.request_model}
        if round_.response_model:
            labels[gen_ai.GEN_AI_RESPONSE_MODEL] = round_.response_model
        outcome = labels if round_.error_type is None else {**labels, ERROR_TYPE: round_.error_type}
        self.operation_duration.record(round_.seconds, outcome)
        if round_.usage is not None:
            self.token_usage.record(round_.usage.prompt_tokens, {**labels, gen_ai.GEN_AI_TOKEN_TYPE: _INPUT})
            self.token_usage.record(round_.usage.completion_tokens,
                                    {**labels, gen_ai.GEN_AI_TOKEN_TYPE: _OUTPUT})
        if round_.time_to_first_chunk_s is not None:
            self.time_to_first_chunk.record(round_.time_to_first_chunk_s, labels)

    def tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        self.tool_duration.record(seconds, {gen_ai.GEN_AI_TOOL_NAME: tool, TOOL_OUTCOME: outcome})

    def approval_decided(self, tool: str, verdict: str) -> None:
        self.approvals.add(1, {gen_ai.GEN_AI_TOOL_NAME: tool, VERDICT: verdict})

    def run_ended(self, agent: str, stop_reason: str, seconds: float) -> None:
        self.run_duration.record(seconds, {gen_ai.GEN_AI_AGENT_NAME: agent, STOP_REASON: stop_reason})
        if stop_reason == StopReason.CANCELLED.value:
            self.cancellations.add(1, {gen_ai.GEN_AI_AGENT_NAME: agent})

    def steered(self, agent: str) -> None:
        self.steering.add(1, {gen_ai.GEN_AI_AGENT_NAME: agent})

    def compacted(self, agent: str) -> None:
        self.compactions.add(1, {gen_ai.GEN_AI_AGENT_NAME: agent})


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
