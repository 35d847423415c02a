"""Pilothouse's Python client: an async, typed wrapper over the gRPC stubs.

    async with PilothouseClient("127.0.0.1:50051") as client:
        session = await client.get_or_create_session("assistant", created_by="me")
        async for event in client.stream_to(session.id, "What time is it?"):
            ...
"""

from pilothouse.client.client import PilothouseClient, PilothouseRpcError, SteerStream, decision

__all__ = ["PilothouseClient", "PilothouseRpcError", "SteerStream", "decision"]
