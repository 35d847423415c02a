"""The token-relay baseline: a bare grpc.aio server-streaming method, run as
its own process like the runtime:

    python bench/rawgrpc.py --port PORT [--loop uvloop]

`/bench.Relay/Stream` takes a request of 4 bytes (big-endian message count)
followed by one serialized `StreamToResponse` (a real text delta of the
runtime's), and streams that many messages like it, each built for its
event as the runtime must: a new `AgentEvent` with its own sequence number
and time, serialized by gRPC. So the baseline moves the same bytes as the
runtime with no work besides building the message and gRPC's own. The
server uses the runtime's server options.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc

from pilothouse.rpc.serving import SERVER_OPTIONS
from pilothouse.v1 import event_pb2, run_service_pb2 as runs_pb

SERVICE, METHOD = "bench.Relay", "Stream"
PATH = f"/{SERVICE}/{METHOD}"


async def stream(
    request: bytes, context: grpc.aio.ServicerContext
) -> AsyncIterator[runs_pb.StreamToResponse]:
    count = int.from_bytes(request[:4], "big")
    template = runs_pb.StreamToResponse.FromString(request[4:]).event
    for sequence in range(1, count + 1):
        event = event_pb2.AgentEvent(
            session_id=template.session_id, run_id=template.run_id, sequence=sequence,
            text_delta=event_pb2.TextDelta(text=template.text_delta.text),
        )
        event.time.GetCurrentTime()
        yield runs_pb.StreamToResponse(event=event)


async def serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_stream_rpc_method_handler(
            stream, response_serializer=runs_pb.StreamToResponse.SerializeToString,
        )}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
