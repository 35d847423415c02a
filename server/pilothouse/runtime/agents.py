"""The agent registry: agents live in the store, shared by every replica;
each replica builds the immutable `Agent` of a stored version once, with
its own ToolExecutors' tool schemas."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from pilothouse.errors import FailedPreconditionError, InvalidArgumentError, agent_not_found
from pilothouse.runtime.agent import Agent, AgentConfig
from pilothouse.runtime.delegation import check_delegation, delegate_spec
from pilothouse.runtime.hookchain import NO_HOOKS, HookChain
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.store.base import AgentRecord, SessionStore
from pilothouse.runtime.tools import ToolCatalog, ToolSpec

log = logging.getLogger(__name__)


def require(value: str, field: str) -> None:
    """INVALID_ARGUMENT when `value` is empty."""
    if not value:
        raise InvalidArgumentError.field(field, "must not be empty")


class AgentRegistry:
    """Agents by name, in alphabetical order. Methods raise
    `PilothouseError` subclasses, see each docstring."""

    def __init__(
        self,
        store: SessionStore,
        tools: ToolCatalog,
        default_model: str,
        check_model: Callable[[str], None] | None = None,
        approval_exempt: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.tools = tools
        self.default_model = default_model
        #: Raises FailedPreconditionError (UNKNOWN_MODEL_PROVIDER) for a
        #: model that names no configured provider.
        self.check_model_name = check_model
        #: Tools whose executor-declared `requires_approval` is lifted.
        self.approval_exempt = approval_exempt
        self._built: dict[str, Agent] = {}
        # Agents carry a snapshot of their tools: rebuild them when tools change.
        tools.on_change(self._built.clear)
        #: The hook plugins; their `on_build_agent` sees every config `add` takes.
        self.hooks: HookChain = NO_HOOKS

    def check_model(self, config: AgentConfig) -> None:
        """FAILED_PRECONDITION (UNKNOWN_MODEL_PROVIDER) when the agent's
        model or fallback model names a provider that is not configured."""
        if self.check_model_name is None:
            return
        for name in (config.model or self.default_model, config.fallback_model):
            if name:
                self.check_model_name(name)

    def check_tools(self, config: AgentConfig) -> None:
        """FAILED_PRECONDITION (TOOL_NOT_AVAILABLE) when a tool the config
        names is offered by no ToolExecutor; with delegates, INVALID_ARGUMENT
        when a tool is named `delegate` and FAILED_PRECONDITION
        (A2A_CLIENT_MISSING) for remote delegates without the a2a-sdk."""
        check_delegation(config)
        missing = self.tools.missing(config.tools)
        if missing:
            raise FailedPreconditionError(
                f"agent {config.name!r} names tools no ToolExecutor offers: {', '.join(missing)}",
                reason="TOOL_NOT_AVAILABLE",
                metadata={"agent": config.name, "tools": ",".join(missing)},
            )

    async def add(self, config: AgentConfig, *, source: str = "api", replace: bool = False) -> Agent:
        """Register an agent. ALREADY_EXISTS for a taken name unless
        `replace` (the agents file: a changed config gets a new version);
        FAILED_PRECONDITION when a tool it names is not offered or its model
        names no configured provider; what a failing `on_build_agent` hook
        raises (FAILED_PRECONDITION HOOK_FAILED, or the plugin's own error)."""
        config = await self.hooks.build_agent(config)  # hooks: on_build_agent
        self.check_tools(config)
        self.check_model(config)
        now = time.time()
        record = await self.store.put_agent(
            AgentRecord(config.name, config.model_dump(mode="json"), source, 0, now, now),
            replace=replace,
        )
        agent = self._agent_of(record)
        log.info(
            "agent %s v%d registered (%s, model %s)",
            agent.name, agent.version, source, agent.config.model,
        )
        return agent

    def _agent_of(self, record: AgentRecord) -> Agent:
        """The immutable agent for a stored record, built once per version."""
        cached = self._built.get(record.name)
        if cached is not None and cached.version == record.version:
            return cached
        agent = self.build(record.config, version=record.version, created_at=record.created_at,
                           source=record.source)
        self._built[record.name] = agent
        return agent

    def build(
        self, config: dict[str, Any], *, version: int, created_at: float = 0.0, source: str = "api"
    ) -> Agent:
        """An agent from a config as stored (a run keeps the config it
        started with): the default model filled in, this replica's tool
        schemas attached."""
        parsed = AgentConfig.model_validate(config)
        if not parsed.model:
            parsed = parsed.model_copy(update={"model": self.default_model})
        return Agent(
            parsed,
            self._tool_specs(parsed),
            created_at=created_at or time.time(),
            source=source,
            version=version,
        )

    # --- delegation ------------------------------------------------------------------

    def _tool_specs(self, config: AgentConfig) -> tuple[ToolSpec, ...]:
        """The config's tools (the approval-exempt ones exempted), and the
        `delegate` tool when it has delegates."""
        specs = tuple(
            dataclasses.replace(spec, requires_approval=False)
            if spec.name in self.approval_exempt else spec
            for spec in self.tools.snapshot(config.tools)
        )
        delegate = delegate_spec(config, self._description)
        return specs if delegate is None else (*specs, delegate)

    def _description(self, name: str) -> str:
        agent = self._built.get(name)
        return agent.config.description if agent is not None else ""

    async def _with_delegates(self, agent: Agent) -> Agent:
        """`agent` with its `delegate` tool describing its delegates as the
        registry has them now (their descriptions read once)."""
        for name in agent.config.delegates:
            if name not in self._built and (record := await self.store.get_agent(name)):
                self._agent_of(record)
        specs = self._tool_specs(agent.config)
        if specs == agent.tools:
            return agent
        agent = dataclasses.replace(agent, tools=specs)
        self._built[agent.name] = agent
        return agent

    def cached(self, name: str) -> Agent | None:
        """The agent last built under `name`, if any (no store read)."""
        return self._built.get(name)

    async def get(self, name: str, field: str = "name") -> Agent:
        """The agent as the registry has it now. INVALID_ARGUMENT for an
        empty name, NOT_FOUND if unknown."""
        require(name, field)
        record = await self.store.get_agent(name)
        if record is None:
            self._built.pop(name, None)
            raise agent_not_found(name)
        agent = self._agent_of(record)
        if agent.config.delegates:
            agent = await self._with_delegates(agent)
        return agent

    async def list_agents(self, size: int, token: str) -> tuple[list[Agent], str]:
        """A page of agents in alphabetical order and the next page token."""
        limit = page_size(size, default=50)
        after = decode_token(token, "agents") or ""
        records = [r for r in await self.store.list_agents() if r.name > after]
        page = [self._agent_of(r) for r in records[:limit]]
        more = len(records) > limit
        return page, encode_token("agents", page[-1].name) if more and page else ""

    async def delete(self, name: str) -> None:
        """Remove an agent; NOT_FOUND if unknown. Its sessions stay
        readable; new runs on them fail with NOT_FOUND."""
        require(name, "name")
        self._built.pop(name, None)
        if not await self.store.delete_agent(name):
            raise agent_not_found(name)
