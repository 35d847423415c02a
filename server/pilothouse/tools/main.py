"""`pilothouse-tools`: serve the default tool registry (the built-ins).

Usage: ``pilothouse-tools [--listen HOST:PORT] [--log-level LEVEL]``.
The address defaults to $PILOTHOUSE_TOOLS_LISTEN_ADDRESS, else
127.0.0.1:50052. Once serving, prints "pilothouse-tools listening on
HOST:PORT" on stdout. SIGTERM or SIGINT drains (health NOT_SERVING, then
in-flight calls get 10 s) and exits 0; a bind failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from pilothouse.rpc.serving import install_stop_signals
from pilothouse.tools import default_registry
from pilothouse.tools.service import serve_tools

log = logging.getLogger("pilothouse.tools")

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:50052"
LISTEN_ADDRESS_ENV = "PILOTHOUSE_TOOLS_LISTEN_ADDRESS"
#: Seconds in-flight calls get to finish on SIGTERM/SIGINT.
DRAIN_GRACE_SECONDS = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pilothouse-tools",
        description="Serve the built-in Pilothouse tools as pilothouse.v1.ToolExecutorService.",
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get(LISTEN_ADDRESS_ENV) or DEFAULT_LISTEN_ADDRESS,
        metavar="HOST:PORT",
        help=f"address to listen on (default: ${LISTEN_ADDRESS_ENV} or {DEFAULT_LISTEN_ADDRESS};"
        " port 0 picks a free port)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default: INFO)",
    )
    return parser.parse_args(argv)


def _shown_address(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return f"{host}:{port}"


async def serve(listen: str) -> int:
    """Serve `default_registry` on `listen` until SIGTERM/SIGINT, then
    drain; returns the exit code (1 if the address cannot be bound)."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        running = await serve_tools(default_registry, listen)
    except RuntimeError as exc:
        log.error("cannot listen on %s: %s", listen, exc)
        return 1
    print(f"pilothouse-tools listening on {_shown_address(listen, running.port)}", flush=True)
    log.info("serving tools: %s", ", ".join(default_registry.names))
    await stop.wait()
    log.info("stopping: draining in-flight calls (up to %.0f s)", DRAIN_GRACE_SECONDS)
    await running.drain(DRAIN_GRACE_SECONDS)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 after a signal, 1 if
    the address cannot be bound)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args.listen))


if __name__ == "__main__":
    sys.exit(main())
