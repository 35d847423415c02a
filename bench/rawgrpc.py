"""The token-relay baseline: a bare grpc.aio server-streaming method, run as
its own process like the runtime:

    python bench/rawgrpc.py --port PORT [--loop uvloop]

`/bench.Relay/Stream` takes a request of 4 bytes (big-endian message count)
followed by one serialized message, and streams that message back that many
times. The bench client sends a real `StreamToResponse` text delta of the
runtime's size, so the baseline moves the same bytes as the runtime with no
work besides gRPC's own. The server uses the runtime's server options.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc

from pilothouse.rpc.serving import SERVER_OPTIONS

SERVICE, METHOD = "bench.Relay", "Stream"
PATH = f"/{SERVICE}/{METHOD}"


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    count = int.from_bytes(request[:4], "big")
    payload = request[4:]
    for _ in range(count):
        yield payload


async def serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_stream_rpc_method_handler(stream)}
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
