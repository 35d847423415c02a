"""Method-level authorization: which roles may call which RPC."""

from __future__ import annotations

from dataclasses import dataclass, field

from pilothouse.auth.principal import ADMIN, USER, Principal
from pilothouse.v1 import agent_service_pb2

#: Services every caller may use without credentials.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_OPEN_PREFIXES = tuple(f"/{s}/" for s in OPEN_SERVICES)


def is_open(method: str) -> bool:
    """Whether `method` ("/package.Service/Method") needs no credentials."""
    return method.startswith(_OPEN_PREFIXES)


def _agent_writes() -> frozenset[str]:
    service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
    return frozenset(
        f"/{service.full_name}/{m.name}"
        for m in service.methods
        if m.name.startswith(("Create", "Update", "Delete", "Replace"))
    ) | {"/pilothouse.v1.SessionService/RebindSession"}


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """`admin_methods` need the admin role; every other method needs one
    of `caller_roles` (empty: any authenticated principal)."""

    admin_methods: frozenset[str] = field(default_factory=frozenset)
    caller_roles: frozenset[str] = field(default_factory=frozenset)

    def allows(self, principal: Principal, method: str) -> bool:
        if method in self.admin_methods:
            return principal.is_admin
        return not self.caller_roles or principal.has_any(self.caller_roles)


#: The runtime: agent CRUD is an admin right (CreateAgent, UpdateAgent,
#: DeleteAgent), and so is rebinding a session to a replaced agent
#: (RebindSession); runs and sessions are for users and admins.
RUNTIME_POLICY = MethodPolicy(_agent_writes(), frozenset({ADMIN, USER}))

#: The ToolExecutor: any authenticated caller (who may call is decided by
#: the tokens file or the client CA); tools may restrict themselves further.
TOOL_EXECUTOR_POLICY = MethodPolicy()
