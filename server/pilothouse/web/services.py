"""The services the web port serves to browsers."""

from __future__ import annotations

from google.protobuf import descriptor

from pilothouse.v1 import agent_service_pb2, run_service_pb2, session_service_pb2

#: AgentService, SessionService and RunService, as their descriptors.
BROWSER_SERVICES: tuple[descriptor.ServiceDescriptor, ...] = (
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
)
