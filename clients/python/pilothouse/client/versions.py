"""Agent versions and session bindings: `UpdateAgent`, `ListAgentVersions`,
`UpdateSession` and `RebindSession`, mixed into `PilothouseClient`.

    agent = await client.update_agent("assistant", system_prompt="Be brief.")
    agent.version                                  # 2: every version is kept
    [a.version for a in await client.list_agent_versions("assistant")]  # [2, 1]
    await client.update_session(session.id, agent_version=1)   # pin v1
    await client.rebind_session(session.id)        # admins: after delete + create
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import field_mask_pb2

from pilothouse.client.errors import translating
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    session_pb2,
    session_service_pb2 as sessions_pb,
    session_service_pb2_grpc as sessions_grpc,
)


class AgentVersions:
    """The calls about versions; needs the client's stubs and deadline.
    Errors are the SDK's `PilothouseError` subclasses."""

    agents: agents_grpc.AgentServiceAsyncStub
    sessions: sessions_grpc.SessionServiceAsyncStub
    timeout: float | None

    @translating
    async def update_agent(
        self, name: str, *, update_mask: Iterable[str] | None = None, **fields: Any
    ) -> agent_pb2.Agent:
        """Change the AgentConfig `fields` given (keywords, e.g.
        `system_prompt="…"`, `tools=[]` to clear them) of agent `name` and
        return its new version. `update_mask` overrides the paths sent
        (default: `config.<field>` for each keyword; `["*"]` replaces the
        whole config). Needs the admin role. NotFoundError for an unknown
        agent, InvalidArgumentError (INVALID_UPDATE_MASK) for a path that is
        no mutable field, FailedPreconditionError (AGENT_FROM_FILE) for an
        agent of the agents file, AbortedError (AGENT_VERSION_CONFLICT) when
        another update came first."""
        paths = list(update_mask) if update_mask is not None else [f"config.{f}" for f in fields]
        reply = await self.agents.UpdateAgent(
            agents_pb.UpdateAgentRequest(
                agent=agent_pb2.Agent(config=agent_pb2.AgentConfig(name=name, **fields)),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            timeout=self.timeout,
        )
        return reply.agent

    @translating
    async def list_agent_versions(self, name: str, page_size: int = 0) -> list[agent_pb2.Agent]:
        """Every version of agent `name`, newest first (follows the pages).
        NotFoundError for an unknown agent."""
        items: list[agent_pb2.Agent] = []
        token = ""
        while True:
            reply = await self.agents.ListAgentVersions(
                agents_pb.ListAgentVersionsRequest(name=name, page_size=page_size, page_token=token),
                timeout=self.timeout,
            )
            items.extend(reply.agents)
            token = reply.next_page_token
            if not token:
                return items

    @translating
    async def update_session(
        self, session_id: str, *, agent_version: int | None = None, title: str | None = None
    ) -> session_pb2.Session:
        """Pin `agent_version` of the session's agent (0: follow the latest)
        and/or set its title; None leaves a field unchanged. NotFoundError
        for an unknown session or version, FailedPreconditionError
        (AGENT_REPLACED) when the session's agent was deleted and created
        again (an admin must `rebind_session` it)."""
        session = session_pb2.Session(id=session_id)
        paths = []
        if agent_version is not None:
            session.agent_version = agent_version
            paths.append("agent_version")
        if title is not None:
            session.title = title
            paths.append("title")
        reply = await self.sessions.UpdateSession(
            sessions_pb.UpdateSessionRequest(
                session=session, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            timeout=self.timeout,
        )
        return reply.session

    @translating
    async def rebind_session(self, session_id: str, agent_version: int = 0) -> session_pb2.Session:
        """Bind a session to its agent as registered now (after the agent
        was deleted and created again), pinned to `agent_version` (0: the
        latest). Needs the admin role (PermissionDeniedError)."""
        reply = await self.sessions.RebindSession(
            sessions_pb.RebindSessionRequest(session_id=session_id, agent_version=agent_version),
            timeout=self.timeout,
        )
        return reply.session
