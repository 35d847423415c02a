"""Health checking and server reflection on the runtime, as grpcurl and
`buf curl` use them."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

RUNTIME_SERVICES = {
    "pilothouse.v1.AgentService",
    "pilothouse.v1.SessionService",
    "pilothouse.v1.RunService",
}


async def test_health_serving_for_every_service(app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ["", *RUNTIME_SERVICES]:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("unknown service reported healthy")


async def test_reflection_lists_and_describes_services(app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="pilothouse.v1.RunService"),
        ]
        replies = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=5)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert RUNTIME_SERVICES | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto


async def test_reflection_v1_and_health_list(app):
    """Reflection answers as v1 too (what buf curl and grpcurl try first), and
    grpc.health.v1.Health/List lists every service's status."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        replies = [
            r async for r in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                  timeout=5)
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"grpc.reflection.v1alpha.ServerReflection", "pilothouse.v1.RunService"} <= names

        listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
        statuses = {name: status.status for name, status in listed.statuses.items()}
        assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
        assert all(statuses[s] == health_pb2.HealthCheckResponse.SERVING for s in RUNTIME_SERVICES)
