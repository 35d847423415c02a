"""Agent configuration and the immutable agent built from it: its model
settings, the request it sends each round, and the per-run overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime import answers
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import (
    ChatRequest,
    ModelSettings,
    ReasoningEffort,
    ResponseFormat,
)
from pilothouse.runtime.tools import ToolSpec

DEFAULT_MAX_ITERATIONS = 16
MAX_MAX_ITERATIONS = 256
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
#: What an agent name that breaks `NAME_PATTERN` is told.
NAME_RULE = "must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter"
TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
#: The most stop sequences an agent may set (OpenAI accepts 4, Anthropic more).
MAX_STOP_SEQUENCES = 16


class ApprovalPolicy(StrEnum):
    """Which tool calls wait for a human decision: "" (as the ToolExecutor
    declares, plus `approval_required_tools`), "never" or "always"."""

    DEFAULT = ""
    NEVER = "never"
    ALWAYS = "always"


class RemoteDelegate(BaseModel):
    """A remote A2A agent an agent may delegate to: `name` is what the
    model calls it, `agent_card_url` its agent card (or its base URL),
    `description` what it does ("" for the card's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    agent_card_url: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("agent_card_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) > 2048:
            raise ValueError("must be an http:// or https:// URL")
        return value


class AgentConfig(BaseModel):
    """What an agent is built from. Defaults are applied on validation:
    `max_iterations` 0 → 16; `tool_choice` "" → "auto"; `model` "" → the
    server's default model (filled in by the runtime).

    `model` (and `fallback_model`) may be "provider/model" to use a named
    provider. The model settings (`temperature` 0-2, `top_p` 0-1,
    `max_tokens` (0: the provider's default), `stop_sequences`,
    `parallel_tool_calls`, `reasoning_effort`) are None / empty for the
    provider's default; `thinking` is the older spelling of
    `reasoning_effort = "high"` and applies when no effort is set.
    `response_json_schema` asks for structured output.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    system_prompt: str = ""
    model: str = ""
    tools: tuple[str, ...] = ()
    max_iterations: int = Field(default=DEFAULT_MAX_ITERATIONS, ge=0, le=MAX_MAX_ITERATIONS)
    tool_choice: str = "auto"
    thinking: bool = False
    compact_threshold: int = Field(default=0, ge=0)
    approval_policy: ApprovalPolicy = ApprovalPolicy.DEFAULT
    approval_required_tools: tuple[str, ...] = ()
    context_window: int = Field(default=0, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int = Field(default=0, ge=0)
    stop_sequences: tuple[str, ...] = Field(default=(), max_length=MAX_STOP_SEQUENCES)
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort = ReasoningEffort.DEFAULT
    fallback_model: str = ""
    # Delegation: agents of the registry, and remote A2A agents, this one
    # may hand tasks to (the `delegate` tool; see `runtime.delegation`).
    delegates: tuple[str, ...] = ()
    remote_delegates: tuple[RemoteDelegate, ...] = ()
    #: Who may run the agent (besides admins); both empty: everyone.
    allowed_principals: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()
    # --- structured output ---------------------------------------------------
    #: A JSON Schema (JSON text; a table in an agents file) of the final
    #: answer; "" for free text. See `pilothouse.runtime.answers`.
    response_json_schema: str = ""

    @field_validator("response_json_schema", mode="before")
    @classmethod
    def _schema_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return value

    @field_validator("response_json_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        if value:
            answers.check_schema(value)
        return value

    @property
    def response_format(self) -> ResponseFormat | None:
        """What the model is asked for as structured output, if anything."""
        return answers.response_format(self.response_json_schema) if self.response_json_schema else None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("max_iterations")
    @classmethod
    def _max_iterations(cls, value: int) -> int:
        return value or DEFAULT_MAX_ITERATIONS

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for name in value:
            if not name:
                raise ValueError("tool names must not be empty")
            if name in seen:
                raise ValueError(f"tool {name!r} is listed twice")
            seen.add(name)
        return value

    @field_validator("delegates")
    @classmethod
    def _delegates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not an agent name")
        if len(set(value)) != len(value):
            raise ValueError("an agent is listed twice")
        return value

    @field_validator("remote_delegates")
    @classmethod
    def _remote_delegates(
        cls, value: tuple[RemoteDelegate, ...], info: ValidationInfo
    ) -> tuple[RemoteDelegate, ...]:
        names = [d.name for d in value] + list(info.data.get("delegates", ()))
        if len(set(names)) != len(names):
            raise ValueError("a delegate's name is taken by another delegate")
        return value

    @field_validator("stop_sequences")
    @classmethod
    def _stop_sequences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def effective_reasoning_effort(self) -> ReasoningEffort:
        """`reasoning_effort`, or "high" when only `thinking` is set."""
        if self.reasoning_effort is ReasoningEffort.DEFAULT and self.thinking:
            return ReasoningEffort.HIGH
        return self.reasoning_effort

    def request_settings(self) -> ModelSettings:
        """The settings sent with every request of this agent."""
        return ModelSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens or None,
            stop=self.stop_sequences,
            parallel_tool_calls=self.parallel_tool_calls,
            reasoning_effort=self.effective_reasoning_effort,
        )

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: str, info: ValidationInfo) -> str:
        choice = value or "auto"
        if choice not in TOOL_CHOICE_MODES and choice not in info.data.get("tools", ()):
            raise ValueError(
                f"must be auto, none, required or one of the agent's tools, not {choice!r}"
            )
        return choice

    @classmethod
    def parse(cls, data: dict[str, Any], *, field_prefix: str = "config") -> AgentConfig:
        """Validate `data`. Raises InvalidArgumentError with one field
        violation per problem, paths prefixed with `field_prefix`."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            violations = []
            for err in exc.errors():
                path = ".".join(str(p) for p in (field_prefix, *err["loc"]) if p != "")
                violations.append((path, err["msg"]))
            summary = "; ".join(f"{f}: {d}" for f, d in violations)
            raise InvalidArgumentError(
                f"invalid agent config: {summary}", reason="INVALID_AGENT_CONFIG",
                field_violations=violations,
            ) from None


@dataclass(frozen=True, slots=True)
class ModelOverrides:
    """What one run changes of its agent's model settings; None / empty
    keeps the agent's. `model` may be "provider/model"; `tool_choice` is
    validated against the agent's tools."""

    model: str = ""
    tool_choice: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop_sequences: tuple[str, ...] = ()
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    response_json_schema: str = ""

    def changes(self) -> dict[str, Any]:
        """The config fields these overrides set."""
        changed: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None and value != "" and value != ():
                changed[item.name] = value
        return changed


@dataclass(frozen=True, slots=True)
class Agent:
    """An immutable agent: its config (with `model` resolved), the snapshot
    of its tool schemas, when and how it was registered ("file" or "api"),
    and its version in the registry: when the version was made
    (`updated_at`, Unix seconds), the registry's `uid` of the agent, its
    `creator`, and whether it was `removed` from the agents file."""

    config: AgentConfig
    tools: tuple[ToolSpec, ...] = ()
    created_at: float = field(default_factory=time.time)
    source: str = "api"
    version: int = 1
    updated_at: float = 0.0
    uid: str = ""
    creator: str = ""
    removed: bool = False
    #: In a guest turn: the session's own agent, whose assistant messages
    #: carry no sender ("" when this agent is the session's).
    host: str = ""

    @property
    def name(self) -> str:
        return self.config.name

    def build_request(self, history: list[Message]) -> ChatRequest:
        """This round's request: the system prompt, a snapshot of the
        history (other agents' answers framed, see `frame_guests`), the
        tool specs and the model settings; each provider builds its own
        wire format from it."""
        config = self.config
        return ChatRequest(
            model=config.model,
            messages=frame_guests(history, self.name, self.host or self.name),
            system=config.system_prompt,
            tools=self.tools,
            tool_choice=config.tool_choice if self.tools else None,
            settings=config.request_settings(),
            response_format=config.response_format,
        )

    def with_overrides(
        self, overrides: ModelOverrides | None, *, field_prefix: str = "options.overrides"
    ) -> Agent:
        """A copy of this agent with one run's overrides applied (itself
        when there are none). Raises InvalidArgumentError with field paths
        under `field_prefix` for a bad value (a tool_choice naming a tool
        the agent does not have, a temperature out of range, ...)."""
        changes = overrides.changes() if overrides is not None else {}
        if not changes:
            return self
        data = self.config.model_dump()
        data.update(changes)
        config = AgentConfig.parse(data, field_prefix=field_prefix)
        return dataclasses.replace(self, config=config)


def frame_guests(history: list[Message], speaker: str, host: str) -> list[Message]:
    """The history as agent `speaker` sees it: an assistant message by
    another agent (its `sender`, or `host` when it has none) has its text
    wrapped as `<from agent="NAME">...</from>`, so each model knows who
    said what. A copy; messages that need no framing are shared."""
    framed = list(history)
    for index, message in enumerate(framed):
        if message.role is Role.ASSISTANT and (message.sender or host) != speaker and message.content:
            copy = message.copy()
            copy.content = f'<from agent="{message.sender or host}">\n{message.content}\n</from>'
            framed[index] = copy
    return framed
