"""The `memory` hook plugin: remember and recall.

A user message that starts with "/remember " stores the rest as a fact
(`preprocess`); "/forget" forgets them all. Facts live in the session
store (the plugin's `HookState`), so they survive restarts, compaction
and replicas; before every run (`on_before_run`) they are given to the
model as one system message just before the user message (auto-injected:
never stored in the history, refreshed each run). The message itself is
stored as the user wrote it, so the model sees the request too.

Settings (`[hooks.memory]`):

| key | default | meaning |
|---|---|---|
| `scope` | `"session"` | `"session"`: facts belong to one session (deleted with it); `"user"`: to the session's `created_by` on its agent, shared by all of that user's sessions |
| `max_facts` | 50 | facts kept; the oldest go first |
| `remember_command`, `forget_command` | `"/remember"`, `"/forget"` | the commands |
| `heading` | `"Facts the user asked you to remember:"` | the first line of the recall message |
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pilothouse.runtime.hooks import Hook, HookHost, HookState, SessionInfo
from pilothouse.runtime.messages import Message, Role


class MemorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Literal["session", "user"] = "session"
    max_facts: int = Field(50, ge=1, le=10_000)
    remember_command: str = Field("/remember", min_length=1)
    forget_command: str = Field("/forget", min_length=1)
    heading: str = "Facts the user asked you to remember:"


class MemoryHook(Hook):
    """See the module docstring. Raises pydantic.ValidationError for bad
    settings."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = MemorySettings.model_validate(dict(settings or {}))
        self._state: HookState | None = None

    async def start(self, host: HookHost) -> None:
        self._state = host.state

    @property
    def state(self) -> HookState:
        if self._state is None:
            raise RuntimeError("the memory plugin was not started")
        return self._state

    def scope_of(self, session: SessionInfo) -> str:
        if self.settings.scope == "user" and session.created_by:
            return f"user:{session.agent}:{session.created_by}"
        return session.scope

    async def preprocess(self, session: SessionInfo, content: str) -> str:
        command, _, rest = content.strip().partition(" ")
        if command == self.settings.remember_command and rest.strip():
            await self.remember(session, rest.strip())
        elif command == self.settings.forget_command and not rest.strip():
            await self.state.delete(self.scope_of(session))
        return content

    async def remember(self, session: SessionInfo, fact: str) -> None:
        """Store `fact`, dropping the oldest beyond `max_facts`."""
        scope = self.scope_of(session)
        await self.state.put(scope, uuid.uuid4().hex, {"fact": fact, "sender": session.sender})
        stored = await self.state.items(scope)
        for key, _ in stored[: max(len(stored) - self.settings.max_facts, 0)]:
            await self.state.delete(scope, key)

    async def facts(self, session: SessionInfo) -> list[str]:
        """The facts remembered for the session, oldest first."""
        return [
            str(value.get("fact", "")) if isinstance(value, dict) else str(value)
            for _, value in await self.state.items(self.scope_of(session))
        ]

    async def on_before_run(self, session: SessionInfo, history: Sequence[Message]) -> list[Message]:
        facts = await self.facts(session)
        if not facts:
            return []
        lines = [self.settings.heading, *(f"- {fact}" for fact in facts)]
        return [Message(Role.SYSTEM, "\n".join(lines))]
