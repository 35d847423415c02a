"""Agent cards: every Pilothouse agent described as an A2A agent.

An agent named `name` lives at `<public URL>/agents/<name>/` (JSON-RPC
over HTTP, its card at `/agents/<name>/.well-known/agent-card.json`; the
same endpoint also speaks A2A 0.3's JSON-RPC methods, and the card carries
0.3's fields, for clients that have not moved to 1.0) and,
when the gRPC binding is on, on the runtime's gRPC address with `tenant`
= `name` (the SDK's client puts the interface's tenant in every request).

Skills: the agent itself (its description), then one skill per tool it
may call (the tool's description, tagged with its flags), so a caller
sees what the agent can do before it asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from a2a.types import a2a_pb2 as pb
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_CURRENT,
    TransportProtocol,
)

from pilothouse.runtime.agent import Agent

#: What the agents take and give: plain text (structured answers to
#: approvals and questions travel as JSON data parts).
INPUT_MODES = ("text/plain", "application/json")
OUTPUT_MODES = ("text/plain", "application/json")
BEARER_SCHEME = "bearer"


def agent_path(name: str) -> str:
    """The agent's JSON-RPC endpoint path, `/agents/<name>/`."""
    return f"/agents/{name}/"


def card_path(name: str) -> str:
    return agent_path(name).rstrip("/") + AGENT_CARD_WELL_KNOWN_PATH


@dataclass(frozen=True, slots=True)
class CardSettings:
    """Where the agents are reached: `public_url` is the HTTP root clients
    use (scheme, host, port, no trailing slash); `grpc_address` the
    runtime's gRPC `host:port` when the gRPC binding is on, else "";
    `bearer` whether calls need `Authorization: Bearer` credentials."""

    public_url: str
    grpc_address: str = ""
    bearer: bool = False


def agent_card(agent: Agent, where: CardSettings) -> pb.AgentCard:
    """The A2A card of `agent`."""
    config = agent.config
    name = config.name
    card = pb.AgentCard(
        name=name,
        description=config.description or f"The Pilothouse agent {name!r}.",
        version=str(agent.version),
        capabilities=pb.AgentCapabilities(
            streaming=True, push_notifications=False, extended_agent_card=False
        ),
        default_input_modes=list(INPUT_MODES),
        default_output_modes=list(OUTPUT_MODES),
    )
    url = where.public_url.rstrip("/") + agent_path(name)
    for version in (PROTOCOL_VERSION_CURRENT, PROTOCOL_VERSION_0_3):
        card.supported_interfaces.append(
            pb.AgentInterface(
                url=url, protocol_binding=TransportProtocol.JSONRPC.value, protocol_version=version
            )
        )
    if where.grpc_address:
        card.supported_interfaces.append(
            pb.AgentInterface(
                url=where.grpc_address,
                protocol_binding=TransportProtocol.GRPC.value,
                tenant=name,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        )
    card.skills.append(
        pb.AgentSkill(
            id=name,
            name=name,
            description=config.description or f"Converse with {name}, which may call its tools.",
            tags=["agent", "pilothouse"],
        )
    )
    for tool in agent.tools:
        tags = ["tool"]
        tags += [flag for flag, on in (("read-only", tool.read_only), ("destructive", tool.destructive),
                                       ("idempotent", tool.idempotent),
                                       ("requires-approval", tool.requires_approval)) if on]
        card.skills.append(
            pb.AgentSkill(id=f"{name}.{tool.name}", name=tool.name,
                          description=tool.description or tool.name, tags=tags)
        )
    if where.bearer:
        card.security_schemes[BEARER_SCHEME].http_auth_security_scheme.scheme = "Bearer"
        requirement = card.security_requirements.add()
        requirement.schemes[BEARER_SCHEME].SetInParent()
    return card
