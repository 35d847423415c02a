"""The hook interface: in-process plugins that shape what agents do.

A plugin is a Python object, usually a subclass of `Hook`, found through
the entry-point group `pilothouse.hooks` and enabled by name in the
server's settings (`PILOTHOUSE_HOOKS=memory,argument_policy`; each
plugin's own table, `[hooks.NAME]` in the config file, is passed to its
factory). It implements any of the methods below; the ones it leaves out
cost nothing. Every method may be a plain function or a coroutine
function. Enabled plugins are called in the order the settings name them,
each one getting what the previous one returned.

| method | called | returns |
|---|---|---|
| `on_build_agent(config)` | an agent is registered or its config changes | the `AgentConfig` to register |
| `preprocess(session, content)` | before the user message is stored | the content to store |
| `on_before_run(session, history)` | before the run's first model round | messages to insert before the user message |
| `before_model_call(request)` | before every model round | the `ChatRequest` to send, or `Stop` |
| `after_model_call(response)` | after every model round | the `ModelResponse` to keep, or `Stop` |
| `before_tool_call(call)` | before a call to a ToolExecutor tool is started | `Allow`, `Deny`, `Ask` or `Rewrite` |
| `after_tool_call(call, result)` | when a call's result is back, before it is stored | the `ToolResult` to store |
| `on_event(event)` | for every event of every run | nothing |

Semantics:

- Messages from `on_before_run` are marked `auto_injected` and are never
  stored: they are part of what the model sees in this run only, right
  before the run's user message, and the next run gets fresh ones (the
  previous ones are gone with the run; auto-injected messages found in a
  stored history, from an import, are dropped from the model's view too).
  A run that resumes after a crash asks again.
- `Stop(message)` from a model hook ends the run with
  `STOP_REASON_GUARDRAIL` and `message` in `done.error`. Text the model
  streamed before an `after_model_call` stop has reached clients already,
  but the round is not stored.
- `Deny(reason)` gives the call an error result the model reads; `Ask`
  makes it wait for a human decision like a tool that requires approval;
  `Rewrite(arguments)` replaces its arguments before it is journalled, so
  the stored call says what ran.
- `on_event` runs apart from the run: each plugin has a bounded queue of
  events drained by its own task, so a slow plugin never stalls a run (an
  event that finds the queue full is dropped and counted) and its errors
  are logged and skipped.
- A hook that raises ends the run with `STOP_REASON_ERROR` and the error
  in `done.error`, recorded on the current span (event `hook_failed`,
  status ERROR); history stays valid (a tool round whose hook failed is
  stored with a result for every call). A `PilothouseError` a plugin
  raises on purpose keeps its status code where an RPC fails with it
  (`on_build_agent` on CreateAgent, `preprocess` on the message that
  starts a run).

Inside a run's hooks `current_session()` tells which session, run, agent
and sender they work for. `start(host)` gets a `HookHost` with durable
state in the session store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pilothouse.errors import FailedPreconditionError
from pilothouse.runtime.agent import AgentConfig
from pilothouse.runtime.events import RunEvent, ToolResult
from pilothouse.runtime.messages import Message, ToolCall, Usage
from pilothouse.runtime.model.base import ChatRequest
from pilothouse.runtime.store.hook_state import HookStateStore, session_scope

#: The entry-point group plugins are registered under.
ENTRY_POINT_GROUP = "pilothouse.hooks"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Allow",
    "Ask",
    "Deny",
    "Hook",
    "HookError",
    "HookHost",
    "HookState",
    "ModelResponse",
    "Rewrite",
    "SessionInfo",
    "Stop",
    "ToolDecision",
    "current_session",
]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The session (and run) a hook is called for. `run_id` is "" outside a
    run; `sender` is who sent the run's user message."""

    session_id: str
    agent: str
    created_by: str
    run_id: str = ""
    sender: str = ""

    @property
    def scope(self) -> str:
        """The `HookState` scope that belongs to this session (deleted with
        it)."""
        return session_scope(self.session_id)


@dataclass(frozen=True, slots=True)
class Stop:
    """End the run with STOP_REASON_GUARDRAIL; `message` goes to
    `done.error`."""

    message: str


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the tool call run (it may still need approval)."""


@dataclass(frozen=True, slots=True)
class Deny:
    """Do not run the call: its result is an error with `reason`."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Make the call wait for a human decision (`approval_required` with
    `reason`)."""

    reason: str = "a hook asks for approval of this call"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Run the call with these arguments instead (JSON text or a JSON
    object)."""

    arguments: str | dict[str, Any]

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


ToolDecision = Allow | Deny | Ask | Rewrite


@dataclass(slots=True)
class ModelResponse:
    """One model round's outcome as `after_model_call` sees it: the
    assistant message (text, reasoning, tool calls), the provider's finish
    reason ("stop", "length", "tool_calls", "content_filter", "refusal",
    ...), the round's usage and the model that answered."""

    message: Message
    finish_reason: str
    usage: Usage
    model: str


class HookError(FailedPreconditionError):
    """A hook failed (FAILED_PRECONDITION, reason HOOK_FAILED, metadata
    `hook` and `method`)."""

    default_reason = "HOOK_FAILED"

    def __init__(self, hook: str, method: str, detail: str) -> None:
        super().__init__(
            f"hook {hook!r} failed in {method}: {detail}",
            metadata={"hook": hook, "method": method},
        )
        self.hook = hook
        self.method = method


class HookState:
    """A plugin's durable values in the session store: JSON values by
    (scope, key). Use `session.scope` for values that belong to one
    session (deleted with it), any other string for wider scopes (for
    example one per user). Raises UnavailableError when the store is
    down."""

    def __init__(self, store: HookStateStore, plugin: str, clock: Any) -> None:
        self._store = store
        self._plugin = plugin
        self._clock = clock

    async def put(self, scope: str, key: str, value: Any) -> None:
        """Store `value` (anything `json.dumps` takes) under `key`."""
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        await self._store.put_hook_value(self._plugin, scope, key, text, self._clock())

    async def items(self, scope: str) -> list[tuple[str, Any]]:
        """The scope's (key, value) pairs, oldest write first."""
        return [(k, json.loads(v)) for k, v in await self._store.hook_values(self._plugin, scope)]

    async def delete(self, scope: str, key: str | None = None) -> int:
        """Delete one key, or every key of the scope; how many went."""
        return await self._store.delete_hook_values(self._plugin, scope, key)


@dataclass(frozen=True, slots=True)
class HookHost:
    """What the server gives a plugin at start: its name and its state."""

    name: str
    state: HookState


class Hook:
    """Base class of plugins: override the methods you need (plain or
    `async def`); the defaults change nothing. See the module docstring
    for when each is called. `name` is set to the entry point's name when
    the plugin is loaded; `event_queue_size` bounds the events waiting for
    its `on_event`."""

    name: str = ""
    event_queue_size: int = 10_000

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        """`settings` is the plugin's table of the server's settings; this
        default takes none (ValueError for any)."""
        if settings:
            raise ValueError(f"{type(self).__name__} takes no settings, not {sorted(settings)}")

    async def start(self, host: HookHost) -> None:
        """Called once when the server starts, before any run."""

    async def close(self) -> None:
        """Called once when the server stops."""

    def on_build_agent(self, config: AgentConfig) -> AgentConfig | Awaitable[AgentConfig]:
        return config

    def preprocess(self, session: SessionInfo, content: str) -> str | Awaitable[str]:
        return content

    def on_before_run(
        self, session: SessionInfo, history: Sequence[Message]
    ) -> list[Message] | Awaitable[list[Message]]:
        return []

    def before_model_call(
        self, request: ChatRequest
    ) -> ChatRequest | Stop | Awaitable[ChatRequest | Stop]:
        return request

    def after_model_call(
        self, response: ModelResponse
    ) -> ModelResponse | Stop | Awaitable[ModelResponse | Stop]:
        return response

    def before_tool_call(self, call: ToolCall) -> ToolDecision | Awaitable[ToolDecision]:
        return Allow()

    def after_tool_call(
        self, call: ToolCall, result: ToolResult
    ) -> ToolResult | Awaitable[ToolResult]:
        return result

    def on_event(self, event: RunEvent) -> Awaitable[None] | None:
        return None


#: The methods a plugin may implement, in the order of the module table.
HOOK_METHODS = (
    "on_build_agent",
    "preprocess",
    "on_before_run",
    "before_model_call",
    "after_model_call",
    "before_tool_call",
    "after_tool_call",
    "on_event",
)


_current: ContextVar[SessionInfo | None] = ContextVar("pilothouse_hook_session", default=None)


def current_session() -> SessionInfo | None:
    """The session and run the calling hook works for (None outside a
    run's hooks, e.g. in `on_build_agent`)."""
    return _current.get()
