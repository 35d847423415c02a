"""Hook plugins the tests load through real entry points: `register`
writes a distribution's metadata (a `.dist-info` with `entry_points.txt`)
into a directory that goes on `sys.path` (and on PYTHONPATH for a server
process), so `importlib.metadata` finds them as it finds installed ones.

Plugins record what they saw in `SEEN` (in-process tests only)."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pilothouse.runtime.agent import AgentConfig
from pilothouse.runtime.events import RunEvent, ToolResult
from pilothouse.runtime.hooks import (
    Allow,
    Hook,
    ModelResponse,
    Rewrite,
    Stop,
    ToolDecision,
    current_session,
)
from pilothouse.runtime.messages import Role, ToolCall
from pilothouse.runtime.model.base import ChatRequest

#: What each plugin saw, by plugin name.
SEEN: defaultdict[str, list[Any]] = defaultdict(list)

ENTRY_POINTS = {
    "guard": "tests.hook_plugins:Guard",
    "failing": "tests.hook_plugins:Failing",
    "rewriter": "tests.hook_plugins:Rewriter",
    "recorder": "tests.hook_plugins:Recorder",
    "stalled": "tests.hook_plugins:Stalled",
    "enricher": "tests.hook_plugins:Enricher",
}


def register(root: Path) -> Path:
    """Write the test plugins' distribution metadata under `root`; put
    `root` on sys.path (or PYTHONPATH) to have them found."""
    dist = root / "pilothouse_test_hooks-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pilothouse-test-hooks\nVersion: 1.0\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in ENTRY_POINTS.items())
    (dist / "entry_points.txt").write_text(f"[pilothouse.hooks]\n{lines}")
    return root


class Guard(Hook):
    """Stops a run whose last user message contains `block_request`, or
    whose answer contains `block_answer`."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.block_request = settings.get("block_request", "")
        self.block_answer = settings.get("block_answer", "")

    def before_model_call(self, request: ChatRequest) -> ChatRequest | Stop:
        last = next((m for m in reversed(request.messages) if m.role is Role.USER), None)
        SEEN["guard"].append(("before_model_call", current_session()))
        if self.block_request and last is not None and self.block_request in last.content:
            return Stop(f"the request mentions {self.block_request!r}")
        return request

    async def after_model_call(self, response: ModelResponse) -> ModelResponse | Stop:
        if self.block_answer and self.block_answer in response.message.content:
            return Stop(f"the answer mentions {self.block_answer!r}")
        return response


class Failing(Hook):
    """Raises in the method its settings name (`on_build_agent`: for
    agents named fragile*); does nothing in the others."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.method = settings["method"]

    def _maybe_fail(self, method: str) -> None:
        if method == self.method:
            raise RuntimeError(f"{method} broke")

    def on_build_agent(self, config: AgentConfig) -> AgentConfig:
        if config.name.startswith("fragile"):  # not the agents file's
            self._maybe_fail("on_build_agent")
        return config

    def preprocess(self, session: Any, content: str) -> str:
        self._maybe_fail("preprocess")
        return content

    def before_model_call(self, request: ChatRequest) -> ChatRequest:
        self._maybe_fail("before_model_call")
        return request

    def before_tool_call(self, call: ToolCall) -> ToolDecision:
        self._maybe_fail("before_tool_call")
        return Allow()

    def after_tool_call(self, call: ToolCall, result: ToolResult) -> ToolResult:
        self._maybe_fail("after_tool_call")
        return result

    def on_event(self, event: RunEvent) -> None:
        self._maybe_fail("on_event")


class Rewriter(Hook):
    """Rewrites `text_stats` calls' text, and redacts digits in results."""

    def before_tool_call(self, call: ToolCall) -> ToolDecision:
        if call.name == "text_stats":
            return Rewrite({"text": "rewritten by a hook"})
        return Allow()

    async def after_tool_call(self, call: ToolCall, result: ToolResult) -> ToolResult:
        if result.output is not None:
            result.output = re.sub(r"\d", "#", result.output)
        return result


class Recorder(Hook):
    """Records every event it observes."""

    async def on_event(self, event: RunEvent) -> None:
        SEEN["recorder"].append(event)


class Stalled(Hook):
    """Never finishes observing an event (its queue holds one)."""

    event_queue_size = 1

    async def on_event(self, event: RunEvent) -> None:
        SEEN["stalled"].append(event)
        await asyncio.Event().wait()


class Enricher(Hook):
    """Adds a sentence to every agent's system prompt."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.sentence = settings.get("sentence", "Always answer politely.")

    def on_build_agent(self, config: AgentConfig) -> AgentConfig:
        prompt = f"{config.system_prompt} {self.sentence}".strip()
        return config.model_copy(update={"system_prompt": prompt})
