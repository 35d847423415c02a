"""`pilothouse-server`: run the runtime until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import pydantic

from pilothouse.rpc.serving import install_stop_signals
from pilothouse.server.app import StartupError, start_app
from pilothouse.server.settings import load_settings
from pilothouse.server.telemetry import configure_tracing

log = logging.getLogger("pilothouse.server")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pilothouse-server", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (else PILOTHOUSE_CONFIG)")
    parser.add_argument("--listen", help="host:port (else PILOTHOUSE_LISTEN_ADDRESS, 127.0.0.1:50051)")
    parser.add_argument("--agents-file", type=Path, help="TOML file of [[agents]]")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    overrides = {}
    if args.listen:
        overrides["listen_address"] = args.listen
    if args.agents_file:
        overrides["agents_file"] = args.agents_file
    try:
        settings = load_settings(args.config, **overrides)
    except (pydantic.ValidationError, FileNotFoundError) as exc:
        log.error("bad settings: %s", exc)
        return 2
    configure_tracing("pilothouse-server")
    try:
        app = await start_app(settings)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    log.info("shutting down: draining for up to %gs", settings.shutdown_grace)
    await app.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per model request is noise at INFO; runs log their own end.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.exit(asyncio.run(_serve(args)))


if __name__ == "__main__":
    main()
