"""The reference ToolExecutor's instruments (see `pilothouse.ops.metrics`
for the pipeline that exports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import Meter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from pilothouse.ops.metrics import DURATION_BUCKETS, TOOL_OUTCOME, histogram


@dataclass(slots=True)
class ToolExecutorMetrics:
    """The reference ToolExecutor's instruments."""

    meter: Meter
    duration: Any = field(init=False)
    active: Any = field(init=False)

    def __post_init__(self) -> None:
        self.duration = histogram(
            self.meter, "pilothouse.tool_executor.call.duration", "s",
            "Duration of ExecuteTool calls, by tool and outcome.", DURATION_BUCKETS,
        )
        self.active = self.meter.create_up_down_counter(
            "pilothouse.tool_executor.calls.active", unit="{call}",
            description="ExecuteTool calls in progress.",
        )

    def record(self, tool: str, outcome: str, seconds: float) -> None:
        self.duration.record(seconds, {gen_ai.GEN_AI_TOOL_NAME: tool, TOOL_OUTCOME: outcome})
