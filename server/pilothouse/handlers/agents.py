"""AgentService: the agent registry over gRPC (thin: convert, call the
runtime, convert back; domain errors become rich statuses)."""

from __future__ import annotations

import grpc

from pilothouse.auth.principal import current_principal
from pilothouse.handlers import convert, masks
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.runtime import Runtime
from pilothouse.v1 import agent_service_pb2 as agents_pb, agent_service_pb2_grpc as agents_grpc

Context = grpc.aio.ServicerContext


class AgentService(agents_grpc.AgentServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @handle_errors
    async def CreateAgent(
        self, request: agents_pb.CreateAgentRequest, context: Context
    ) -> agents_pb.CreateAgentResponse:
        caller = current_principal()
        agent = await self.runtime.add_agent(
            convert.config_from_proto(request.config),
            creator=caller.id if caller is not None and caller.source != "none" else "",
        )
        return agents_pb.CreateAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def GetAgent(
        self, request: agents_pb.GetAgentRequest, context: Context
    ) -> agents_pb.GetAgentResponse:
        agent = await self.runtime.get_agent(request.name, version=request.version)
        return agents_pb.GetAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def UpdateAgent(
        self, request: agents_pb.UpdateAgentRequest, context: Context
    ) -> agents_pb.UpdateAgentResponse:
        current, version = await self.runtime.stored_agent_config(
            request.agent.config.name, "agent.config.name"
        )
        config = masks.updated_config(convert.config_to_proto(current), request.agent,
                                      request.update_mask)
        agent = await self.runtime.update_agent(
            convert.config_from_proto(config), expected_version=version
        )
        return agents_pb.UpdateAgentResponse(agent=convert.agent_to_proto(agent))

    @handle_errors
    async def ListAgentVersions(
        self, request: agents_pb.ListAgentVersionsRequest, context: Context
    ) -> agents_pb.ListAgentVersionsResponse:
        agents, token = await self.runtime.list_agent_versions(
            request.name, request.page_size, request.page_token
        )
        return agents_pb.ListAgentVersionsResponse(
            agents=[convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    @handle_errors
    async def ListAgents(
        self, request: agents_pb.ListAgentsRequest, context: Context
    ) -> agents_pb.ListAgentsResponse:
        agents, token = await self.runtime.list_agents(request.page_size, request.page_token)
        return agents_pb.ListAgentsResponse(
            agents=[convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    @handle_errors
    async def DeleteAgent(
        self, request: agents_pb.DeleteAgentRequest, context: Context
    ) -> agents_pb.DeleteAgentResponse:
        await self.runtime.delete_agent(request.name)
        return agents_pb.DeleteAgentResponse()
