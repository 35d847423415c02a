"""Calling the enabled hook plugins (see `pilothouse.runtime.hooks` for
the interface and its semantics).

`HookChain` holds the server's plugins in order and calls, for each hook
method, every plugin that implements it; `RunHooks` is the chain bound to
one run (what the scheduler, the agent loop and the tool phase call).
Every call is checked (a plugin that returns the wrong type fails like
one that raises) and a failure is recorded on the current span before it
is raised as `HookError`. `on_event` goes through `EventTap`s: one bounded
queue and one draining task per plugin, so publishing an event never
waits for a plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pilothouse.errors import InvalidArgumentError, PilothouseError
from pilothouse.runtime.agent import AgentConfig
from pilothouse.runtime.events import RunEvent, ToolResult
from pilothouse.runtime.hooks import (
    HOOK_METHODS,
    Allow,
    Ask,
    Deny,
    Hook,
    HookError,
    HookHost,
    HookState,
    ModelResponse,
    Rewrite,
    SessionInfo,
    Stop,
    _current,
)
from pilothouse.runtime.messages import Message, ToolCall
from pilothouse.runtime.model.base import ChatRequest
from pilothouse.runtime.store.hook_state import HookStateStore

log = logging.getLogger(__name__)

#: Events one plugin's `on_event` queue holds before new ones are dropped.
DEFAULT_EVENT_QUEUE_SIZE = 10_000
#: Seconds `close` gives the event queues to drain.
EVENT_DRAIN_S = 2.0

_Fn = Callable[..., Any]


def _implements(plugin: object, method: str) -> bool:
    if isinstance(plugin, Hook):
        return getattr(type(plugin), method, None) is not getattr(Hook, method)
    return callable(getattr(plugin, method, None))


def plugin_name(plugin: object) -> str:
    return str(getattr(plugin, "name", "") or type(plugin).__name__)


def _record_failure(hook: str, method: str, exc: BaseException, message: str) -> None:
    span = trace.get_current_span()
    span.add_event("hook_failed", {
        "pilothouse.hook.name": hook,
        "pilothouse.hook.method": method,
        "exception.type": type(exc).__name__,
        "exception.message": str(exc),
    })
    span.set_status(Status(StatusCode.ERROR, message))


def _record_decision(hook: str, method: str, decision: str) -> None:
    trace.get_current_span().add_event("hook_decision", {
        "pilothouse.hook.name": hook,
        "pilothouse.hook.method": method,
        "pilothouse.hook.decision": decision,
    })


async def _call(
    hook: str, method: str, fn: _Fn, *args: Any, expect: tuple[type, ...], passthrough: bool = False
) -> Any:
    """`fn(*args)`, awaited when it returns an awaitable, checked to return
    one of `expect`. Raises HookError (or, with `passthrough`, the
    PilothouseError the plugin raised on purpose)."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
    except asyncio.CancelledError:
        raise
    except PilothouseError as exc:
        error = HookError(hook, method, exc.message)
        _record_failure(hook, method, exc, error.message)
        if passthrough:
            raise
        raise error from exc
    except Exception as exc:
        error = HookError(hook, method, f"{type(exc).__name__}: {exc}")
        _record_failure(hook, method, exc, error.message)
        log.warning("%s", error.message, exc_info=True)
        raise error from exc
    if not isinstance(result, expect):
        names = " or ".join(t.__name__ for t in expect)
        error = HookError(hook, method, f"it returned {type(result).__name__}, not {names}")
        _record_failure(hook, method, TypeError(error.message), error.message)
        raise error
    return result


@dataclass(slots=True)
class ToolVerdict:
    """What the chain decided about one tool call: denied (with the
    reason), or run with `arguments` (None: unchanged), after a decision
    when `ask` is set."""

    deny: str | None = None
    ask: str | None = None
    arguments: str | None = None


class EventTap:
    """One plugin's `on_event`: a bounded queue drained by its own task.
    `dropped` counts events that found the queue full, `failed` calls
    that raised."""

    def __init__(self, hook: str, fn: _Fn, size: int) -> None:
        self.hook = hook
        self._fn = fn
        self._queue: asyncio.Queue[RunEvent] = asyncio.Queue(maxsize=size)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0

    def put(self, event: RunEvent) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"hook-events-{self.hook}"
            )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...
                log.warning("hook %r: its on_event queue is full; %d event(s) dropped so far",
                            self.hook, self.dropped)

    async def _drain(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                result = self._fn(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.failed += 1
                log.exception("hook %r failed in on_event (skipped)", self.hook)
            finally:
                self._queue.task_done()

    async def close(self, timeout_s: float) -> None:
        """Deliver what is queued (up to `timeout_s`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


class HookChain:
    """The enabled plugins, in order (see the module docstring). An empty
    chain is what a server without plugins runs with."""

    def __init__(self, plugins: Sequence[object] = (), *,
                 event_queue_size: int = DEFAULT_EVENT_QUEUE_SIZE) -> None:
        self.plugins = list(plugins)
        self._methods: dict[str, list[tuple[str, _Fn]]] = {
            method: [(plugin_name(p), getattr(p, method)) for p in self.plugins
                     if _implements(p, method)]
            for method in HOOK_METHODS
        }
        self.taps = [
            EventTap(plugin_name(p), p.on_event,  # type: ignore[attr-defined]
                     int(getattr(p, "event_queue_size", event_queue_size)))
            for p in self.plugins if _implements(p, "on_event")
        ]

    def has(self, method: str) -> bool:
        return bool(self._methods.get(method))

    @property
    def empty(self) -> bool:
        return not self.plugins

    # --- lifecycle ---------------------------------------------------------

    async def start(self, store: HookStateStore, clock: Callable[[], float] = time.time) -> None:
        """Call each plugin's `start` with its host (its durable state).
        Raises HookError for a plugin that fails to start."""
        for plugin in self.plugins:
            start = getattr(plugin, "start", None)
            if callable(start):
                name = plugin_name(plugin)
                host = HookHost(name, HookState(store, name, clock))
                await _call(name, "start", start, host, expect=(type(None),))

    async def close(self) -> None:
        """Drain the event queues, then call each plugin's `close`
        (failures are logged)."""
        for tap in self.taps:
            await tap.close(EVENT_DRAIN_S)
        for plugin in reversed(self.plugins):
            close = getattr(plugin, "close", None)
            if callable(close):
                try:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("hook %r failed to close", plugin_name(plugin))

    # --- calls outside runs -------------------------------------------------

    async def build_agent(self, config: AgentConfig) -> AgentConfig:
        """`on_build_agent` of every plugin in turn; the result is validated
        again. Raises HookError, or a plugin's own PilothouseError."""
        if not self.has("on_build_agent"):
            return config
        names = []
        for name, fn in self._methods["on_build_agent"]:
            config = await _call(name, "on_build_agent", fn, config, expect=(AgentConfig,),
                                 passthrough=True)
            names.append(name)
        try:
            return AgentConfig.parse(config.model_dump(), field_prefix="config")
        except InvalidArgumentError as exc:
            raise HookError(",".join(names), "on_build_agent",
                            f"it made an invalid config: {exc.message}") from None

    def bind(self, session: SessionInfo) -> RunHooks:
        """The chain as one run calls it."""
        return RunHooks(self, session)

    def observe(self, event: RunEvent) -> None:
        """Hand `event` to every `on_event` plugin without waiting."""
        for tap in self.taps:
            tap.put(event)

    def observer(self) -> Callable[[RunEvent], None] | None:
        """`observe`, or None when no plugin implements `on_event`."""
        return self.observe if self.taps else None


class RunHooks:
    """The chain bound to one run's session (see `HookChain.bind`)."""

    __slots__ = ("_chain", "session")

    def __init__(self, chain: HookChain, session: SessionInfo) -> None:
        self._chain = chain
        self.session = session

    def has(self, method: str) -> bool:
        return self._chain.has(method)

    async def _each(self, method: str, value: Any, *extra: Any, expect: tuple[type, ...],
                    passthrough: bool = False) -> Any:
        token = _current.set(self.session)
        try:
            for name, fn in self._chain._methods[method]:
                value = await _call(name, method, fn, *extra, value, expect=expect,
                                    passthrough=passthrough)
                if isinstance(value, Stop):
                    _record_decision(name, method, "stop")
                    return value
            return value
        finally:
            _current.reset(token)

    async def preprocess(self, content: str) -> str:
        """The content to store for the user message."""
        if not self.has("preprocess"):
            return content
        result: str = await self._each("preprocess", content, self.session, expect=(str,),
                                       passthrough=True)
        return result

    async def before_run(self, history: list[Message], at: int) -> list[Message]:
        """Drop auto-injected messages from `history` (the model's view),
        then insert every plugin's `on_before_run` messages, marked
        auto-injected, at index `at` (just before the run's user
        message). Returns the inserted messages."""
        if any(m.auto_injected for m in history):
            at -= sum(1 for m in history[:at] if m.auto_injected)
            history[:] = [m for m in history if not m.auto_injected]
        if not self.has("on_before_run"):
            return []
        injected: list[Message] = []
        token = _current.set(self.session)
        try:
            for name, fn in self._chain._methods["on_before_run"]:
                messages = await _call(name, "on_before_run", fn, self.session, tuple(history),
                                       expect=(list, tuple))
                for message in messages:
                    if not isinstance(message, Message):
                        raise HookError(name, "on_before_run",
                                        f"it returned a {type(message).__name__}, not a Message")
                    message.auto_injected = True
                    injected.append(message)
        finally:
            _current.reset(token)
        history[at:at] = injected
        return injected

    async def before_model_call(self, request: ChatRequest) -> ChatRequest | Stop:
        if not self.has("before_model_call"):
            return request
        result: ChatRequest | Stop = await self._each(
            "before_model_call", request, expect=(ChatRequest, Stop)
        )
        return result

    async def after_model_call(self, response: ModelResponse) -> ModelResponse | Stop:
        if not self.has("after_model_call"):
            return response
        result: ModelResponse | Stop = await self._each(
            "after_model_call", response, expect=(ModelResponse, Stop)
        )
        return result

    async def before_tool_call(self, call: ToolCall) -> ToolVerdict:
        """Every plugin's decision on `call` in turn: the first Deny wins;
        a Rewrite gives the next plugins (and the call) new arguments; an
        Ask makes the call wait for a decision."""
        verdict = ToolVerdict()
        if not self.has("before_tool_call"):
            return verdict
        current = ToolCall(call.id, call.name, call.arguments)
        token = _current.set(self.session)
        try:
            for name, fn in self._chain._methods["before_tool_call"]:
                decision = await _call(name, "before_tool_call", fn, current,
                                       expect=(Allow, Deny, Ask, Rewrite))
                if isinstance(decision, Deny):
                    _record_decision(name, "before_tool_call", "deny")
                    return ToolVerdict(deny=decision.reason or f"denied by hook {name!r}")
                if isinstance(decision, Ask):
                    _record_decision(name, "before_tool_call", "ask")
                    verdict.ask = verdict.ask or decision.reason
                elif isinstance(decision, Rewrite):
                    _record_decision(name, "before_tool_call", "rewrite")
                    current = ToolCall(call.id, call.name, decision.arguments_json)
                    verdict.arguments = current.arguments
        finally:
            _current.reset(token)
        return verdict

    async def after_tool_call(self, call: ToolCall, result: ToolResult) -> ToolResult:
        if not self.has("after_tool_call"):
            return result
        value: ToolResult = await self._each("after_tool_call", result, call, expect=(ToolResult,))
        return value


#: The chain of a server without plugins.
NO_HOOKS = HookChain()
