"""Tool schemas and the dispatcher interface the agent loop calls.

The runtime does not run tools itself: a `ToolDispatcher` (in production,
the gRPC client of the ToolExecutors) does. Schemas are registered once at
start-up and each agent gets the snapshot its
config names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pilothouse.runtime.messages import ToolCall


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: `parameters` is its JSON Schema (an object schema); the
    flags are what its ToolExecutor declares (see `Tool` in tool.proto):
    `idempotent` tools may be called again when a run resumes after a
    crash, `requires_approval` tools wait for a decision on every call."""

    name: str
    description: str
    parameters: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False
    read_only: bool = False
    destructive: bool = False
    requires_approval: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The tool as a Chat Completions `tools[]` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool call is for; `principal` is the authenticated caller who
    started the run ("" without authentication)."""

    agent: str
    sender: str
    session_id: str
    run_id: str
    principal: str = ""
    #: The principal's roles, sent to the ToolExecutor with each call.
    principal_roles: tuple[str, ...] = ()
    #: The version of `agent` the run is on (0: unknown, the latest).
    agent_version: int = 0


@dataclass(frozen=True, slots=True)
class ToolQuestion:
    """A question a tool asks the user before it can finish."""

    question: str
    options: tuple[str, ...] = ()
    multi_select: bool = False


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """The user's answer, given to the tool on its next call."""

    selected_options: tuple[str, ...] = ()
    text: str = ""


@dataclass(slots=True)
class ToolOutcome:
    """Exactly one of `output`, `error` and `question` is set."""

    output: str | None = None
    error: str | None = None
    question: ToolQuestion | None = None


class ToolDispatcher(Protocol):
    """Runs tool calls. `dispatch` never raises for a failed call (it returns
    `ToolOutcome(error=...)`, which the model reads); it only propagates
    `asyncio.CancelledError`."""

    async def dispatch(
        self, call: ToolCall, context: ToolContext, answer: ToolAnswer | None = None
    ) -> ToolOutcome:
        """Run `call`; `answer` is the user's answer when the tool asked a
        question on the previous dispatch of the same call."""
        ...


class ToolCatalog:
    """The tool schemas the runtime knows (from every ToolExecutor's
    ListTools), by name, in registration order, updated in place as
    executors come, go and change their tools.

    A tool is *available* while an executor offers it and *known* once one
    has: `withdraw` makes it unavailable (it leaves agents' snapshots; a
    call of it gets an error result) but it stays known, so agents naming
    it are not refused (`missing` lists only names never offered).
    `on_change` callbacks run after every change (the runtime rebuilds its
    agents' snapshots then)."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._known: set[str] = set()
        self._listeners: list[Callable[[], None]] = []
        for spec in specs:
            self.register(spec)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every change of the available tools."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    def register(self, spec: ToolSpec) -> None:
        """Add `spec`, or replace the tool of that name."""
        if self._specs.get(spec.name) == spec:
            return
        self._specs[spec.name] = spec
        self._known.add(spec.name)
        self._changed()

    def withdraw(self, name: str) -> None:
        """No executor offers `name` any more (it stays known)."""
        if self._specs.pop(name, None) is not None:
            self._changed()

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names no executor has ever offered."""
        return [n for n in names if n not in self._known]

    def snapshot(self, names: Iterable[str]) -> tuple[ToolSpec, ...]:
        """The schemas of `names`, in that order; names not available now
        are skipped."""
        return tuple(self._specs[n] for n in names if n in self._specs)


#: The runtime's own tool: a structured question to the user (`ask_user`),
#: answered through the decision path. An agent gets it by
#: naming "ask_user" in its tools.
ASK_USER = ToolSpec(
    name="ask_user",
    description=(
        "Ask the user a question and wait for the answer. Use it when you need a choice "
        "or information only the user has. Returns JSON with `selected_options` and/or `text`."
    ),
    parameters={
        "type": "object",
        "properties": {
            "question": {"type": "string", "description": "The question to ask."},
            "options": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Choices to offer; omit for a free-text answer.",
            },
            "multi_select": {
                "type": "boolean",
                "description": "Whether several options may be chosen.",
                "default": False,
            },
        },
        "required": ["question"],
    },
    metadata={"provider": "pilothouse-runtime"},
)
