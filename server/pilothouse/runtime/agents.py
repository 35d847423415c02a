"""The agent registry: agents live in the store, shared by every replica;
each replica builds the immutable `Agent` of a stored version once, with
its own ToolExecutors' tool schemas.

Every version is kept (`AgentStore`): `update` makes a new one, a run keeps
the config it started with (in its run record), and a session is bound to
an agent's `uid` and may pin a version (`for_session`). An agent deleted and
created again has a new uid: its old sessions refuse runs (AGENT_REPLACED)
until they are rebound."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pilothouse.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    agent_not_found,
    agent_version_not_found,
)
from pilothouse.runtime.agent import NAME_PATTERN, NAME_RULE, Agent, AgentConfig
from pilothouse.runtime.delegation import check_delegation, delegate_spec
from pilothouse.runtime.hookchain import NO_HOOKS, HookChain
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.store.base import AgentRecord, SessionRecord, SessionStore
from pilothouse.runtime.tools import ToolCatalog, ToolSpec

log = logging.getLogger(__name__)

#: Pinned versions built and kept per replica (least recently used go).
_VERSION_CACHE = 256


def require(value: str, field: str) -> None:
    """INVALID_ARGUMENT when `value` is empty."""
    if not value:
        raise InvalidArgumentError.field(field, "must not be empty")


def require_name(value: str, field: str) -> None:
    """INVALID_ARGUMENT when `value` is empty or no agent name."""
    require(value, field)
    if not NAME_PATTERN.match(value):
        raise InvalidArgumentError.field(field, NAME_RULE)


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
        #: Older versions sessions pinned, by (uid, version).
        self._pinned: OrderedDict[tuple[str, int], Agent] = OrderedDict()
        # Agents carry a snapshot of their tools: rebuild them when tools change.
        tools.on_change(self._built.clear)
        tools.on_change(self._pinned.clear)
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

    async def add(
        self, config: AgentConfig, *, source: str = "api", replace: bool = False, creator: str = ""
    ) -> Agent:
        """Register an agent as version 1, made by `creator` (a principal
        id). ALREADY_EXISTS for a taken name unless `replace` (the agents
        file: a changed config gets a new version, a removed agent is back);
        FAILED_PRECONDITION when a tool it names is not offered or its model
        names no configured provider; what a failing `on_build_agent` hook
        raises (FAILED_PRECONDITION HOOK_FAILED, or the plugin's own error)."""
        config = await self._checked(config)
        now = time.time()
        record = await self.store.put_agent(
            AgentRecord(config.name, config.model_dump(mode="json"), source, 0, now, now,
                        uuid.uuid4().hex, creator),
            replace=replace,
        )
        agent = self._agent_of(record)
        log.info(
            "agent %s v%d registered (%s, model %s)",
            agent.name, agent.version, source, agent.config.model,
        )
        return agent

    async def update(self, config: AgentConfig, *, expected_version: int) -> Agent:
        """Store `config` as the next version of its agent (the same version
        when unchanged). NOT_FOUND if unknown; FAILED_PRECONDITION
        (AGENT_FROM_FILE) for an agent of the agents file, and as `add` for
        tools, models and hooks; ABORTED (AGENT_VERSION_CONFLICT) when the
        agent is no longer at `expected_version`."""
        current = await self.store.get_agent(config.name)
        if current is None:
            raise agent_not_found(config.name)
        if current.source == "file":
            raise FailedPreconditionError(
                f"agent {config.name!r} comes from the agents file: change it there",
                reason="AGENT_FROM_FILE",
                metadata={"agent": config.name},
            )
        config = await self._checked(config)
        record = await self.store.update_agent(
            config.name, config.model_dump(mode="json"), expected_version=expected_version,
            now=time.time(),
        )
        if record is None:
            raise agent_not_found(config.name)
        agent = self._agent_of(record)
        log.info("agent %s updated: v%d", agent.name, agent.version)
        return agent

    async def _checked(self, config: AgentConfig) -> AgentConfig:
        config = await self.hooks.build_agent(config)  # hooks: on_build_agent
        self.check_tools(config)
        self.check_model(config)
        return config

    def _agent_of(self, record: AgentRecord, *, latest: bool = True) -> Agent:
        """The immutable agent for a stored record, built once per version
        (the latest by name, pinned ones by uid and version)."""
        cached = self._built.get(record.name) if latest else self._pinned.get(
            (record.uid, record.version))
        if cached is not None and (cached.version, cached.uid, cached.removed) == (
            record.version, record.uid, record.removed
        ):
            if not latest:
                self._pinned.move_to_end((record.uid, record.version))
            return cached
        agent = self.build(record.config, version=record.version, created_at=record.created_at,
                           source=record.source)
        agent = dataclasses.replace(agent, updated_at=record.updated_at, uid=record.uid,
                                    creator=record.created_by, removed=record.removed)
        if latest:
            self._built[record.name] = agent
        else:
            self._pinned[(record.uid, record.version)] = agent
            while len(self._pinned) > _VERSION_CACHE:
                self._pinned.popitem(last=False)
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

    async def get(self, name: str, field: str = "name", *, version: int = 0) -> Agent:
        """The agent as the registry has it now, or its `version` (0: the
        latest). INVALID_ARGUMENT for an empty name, NOT_FOUND if unknown
        (AGENT_NOT_FOUND) or without that version (AGENT_VERSION_NOT_FOUND)."""
        require(name, field)
        record = await self.store.get_agent(name)
        if record is None:
            self._built.pop(name, None)
            raise agent_not_found(name)
        if version and version != record.version:
            kept = await self.store.get_agent_version(name, version)
            if kept is None:
                raise agent_version_not_found(name, version)
            agent = self._agent_of(kept, latest=False)
        else:
            agent = self._agent_of(record)
        if agent.config.delegates:
            agent = await self._with_delegates(agent)
        return agent

    async def stored(self, name: str, field: str = "name") -> tuple[AgentConfig, int]:
        """The latest version's config as registered (the default model not
        filled in) and its version: what an update starts from. NOT_FOUND
        if unknown; INVALID_ARGUMENT for a name that is no agent name."""
        require_name(name, field)
        record = await self.store.get_agent(name)
        if record is None:
            raise agent_not_found(name)
        return AgentConfig.model_validate(record.config), record.version

    async def runnable(self, name: str, field: str = "name", *, version: int = 0) -> Agent:
        """`get`, and FAILED_PRECONDITION (AGENT_REMOVED) for an agent
        removed from the agents file: it takes no new runs or sessions."""
        agent = await self.get(name, field, version=version)
        if agent.removed:
            raise FailedPreconditionError(
                f"agent {name!r} was removed from the agents file: it takes no new runs",
                reason="AGENT_REMOVED",
                metadata={"agent": name},
            )
        return agent

    async def for_session(self, session: SessionRecord) -> Agent:
        """The agent a new run of `session` uses: the version it pinned, or
        the latest. NOT_FOUND if the agent is gone (or its pinned version);
        FAILED_PRECONDITION AGENT_REPLACED when the agent was deleted and
        created again since the session was bound (an admin rebinds it),
        AGENT_REMOVED as `runnable`."""
        agent = await self.runnable(session.agent, "session_id")
        if session.agent_uid and session.agent_uid != agent.uid:
            raise agent_replaced(session)
        if session.agent_version and session.agent_version != agent.version:
            agent = await self.get(session.agent, version=session.agent_version)
        return agent

    async def binding(self, session: SessionRecord, version: int) -> tuple[str, int]:
        """The (agent uid, pinned version) of `session` pinned to `version`
        (0: the latest) of its agent: NOT_FOUND for an unknown version,
        FAILED_PRECONDITION AGENT_REPLACED as `for_session`."""
        agent = await self.get(session.agent, version=version)
        if session.agent_uid and session.agent_uid != agent.uid:
            raise agent_replaced(session)
        return agent.uid, version

    async def list_versions(self, name: str, size: int, token: str) -> tuple[list[Agent], str]:
        """A page of the agent's versions, newest first, and the next page
        token. NOT_FOUND if unknown; INVALID_ARGUMENT for a bad page size
        or token."""
        limit = page_size(size, default=50)
        before = decode_token(token, "agent_versions", {"name": name}) or 0
        if not isinstance(before, int) or before < 0:
            raise InvalidArgumentError.field("page_token", "not a page token of this agent")
        await self.get(name)
        records = await self.store.list_agent_versions(name, before=before, limit=limit + 1)
        page = [self._agent_of(r, latest=False) for r in records[:limit]]
        more = len(records) > limit
        return page, encode_token("agent_versions", page[-1].version,
                                  {"name": name}) if more and page else ""

    async def set_removed(self, name: str, removed: bool) -> bool:
        """Mark an agent removed from the agents file (or back); False if
        it is not registered."""
        return await self.store.set_agent_removed(name, removed)

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


def agent_replaced(session: SessionRecord) -> FailedPreconditionError:
    """A session whose agent was deleted and created again."""
    return FailedPreconditionError(
        f"agent {session.agent!r} was deleted and created again since session "
        f"{session.id!r} was opened: an admin must rebind the session (RebindSession)",
        reason="AGENT_REPLACED",
        metadata={"agent": session.agent, "session_id": session.id},
    )
