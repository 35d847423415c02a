"""Agent configuration and the immutable agent built from it (seed 000
`AgentConfig`, `add_agent`; seed 003 `Agent::build_request`)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.messages import Message
from pilothouse.runtime.model.base import ChatRequest
from pilothouse.runtime.tools import ToolSpec

DEFAULT_MAX_ITERATIONS = 16
MAX_MAX_ITERATIONS = 256
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


class ApprovalPolicy(StrEnum):
    """Which tool calls wait for a human decision: "" (as the ToolExecutor
    declares, plus `approval_required_tools`), "never" or "always"."""

    DEFAULT = ""
    NEVER = "never"
    ALWAYS = "always"


class AgentConfig(BaseModel):
    """What an agent is built from. Defaults are applied on validation:
    `max_iterations` 0 → 16; `tool_choice` "" → "auto"; `model` "" → the
    server's default model (filled in by the runtime)."""

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
    #: Tried for a round when the model's stream keeps failing (after the
    #: stream retries) or the model is unavailable; "" for none.
    fallback_model: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter"
            )
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

    @model_validator(mode="after")
    def _tool_choice(self) -> AgentConfig:
        choice = self.tool_choice or "auto"
        if choice not in TOOL_CHOICE_MODES and choice not in self.tools:
            raise ValueError(
                f"tool_choice must be auto, none, required or one of the agent's tools, "
                f"not {choice!r}"
            )
        if choice != self.tool_choice:
            object.__setattr__(self, "tool_choice", choice)
        return self

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
                f"invalid agent config: {summary}", field_violations=violations
            ) from None


@dataclass(frozen=True, slots=True)
class Agent:
    """An immutable agent: its config (with `model` resolved), the snapshot
    of its tool schemas, when and how it was registered ("file" or "api"),
    and its version in the registry."""

    config: AgentConfig
    tools: tuple[ToolSpec, ...] = ()
    created_at: float = field(default_factory=time.time)
    source: str = "api"
    version: int = 1

    @property
    def name(self) -> str:
        return self.config.name

    def build_request(self, history: list[Message]) -> ChatRequest:
        """System prompt + history + tool schemas (seed `build_request`)."""
        messages: list[dict[str, Any]] = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.extend(m.to_wire() for m in history)
        return ChatRequest(
            model=self.config.model,
            messages=messages,
            tools=[t.to_wire() for t in self.tools],
            tool_choice=self.config.tool_choice if self.tools else None,
            reasoning_effort="high" if self.config.thinking else None,
        )
