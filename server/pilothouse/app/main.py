"""`pilothouse-server`: run the runtime until SIGTERM or SIGINT, then drain.

The first signal drains: every service's health turns NOT_SERVING at once,
new runs are refused with UNAVAILABLE, active runs get
`PILOTHOUSE_SHUTDOWN_GRACE` seconds to finish and store their history.
A second signal, or the end of the grace, cancels what still runs (stop
reason CANCELLED, history valid). The process then exits 0 (2 for bad
settings, 1 when it cannot start).

`--workers N` (or PILOTHOUSE_WORKERS; `--workers` alone or `auto`: the
CPUs this process may use) runs N runtime processes sharing the port
(`pilothouse.app.workers`); signals reach every worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pydantic

from pilothouse.app.settings import Settings, load_settings
from pilothouse.app.startup import (
    SERVICE_NAME,
    StandInModelStarter,
    StartupError,
    start_app,
)
from pilothouse.app.workers import WorkerRole, run_supervisor, worker_count
from pilothouse.ops import eventloop
from pilothouse.ops.logs import configure_logging
from pilothouse.ops.telemetry import configure_tracing, installed_tracer_provider
from pilothouse.rpc.serving import StopSignals

log = logging.getLogger("pilothouse.app")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pilothouse-server",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (else PILOTHOUSE_CONFIG)")
    parser.add_argument("--listen", help="host:port (else PILOTHOUSE_LISTEN_ADDRESS, 127.0.0.1:50051)")
    parser.add_argument("--agents-file", type=Path, help="TOML file of [[agents]]")
    parser.add_argument("--log-level", help="log level (else PILOTHOUSE_LOG_LEVEL, INFO)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log lines (else PILOTHOUSE_LOG_FORMAT, text)"
    )
    parser.add_argument(
        "--workers", nargs="?", const="auto", metavar="N",
        help="runtime processes sharing the port (alone: the CPUs this process may use; "
        "else PILOTHOUSE_WORKERS, 1); they need a shared store (SQLite file or PostgreSQL)",
    )
    return parser.parse_args(argv)


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The arguments a worker gets from the supervisor's command line (its
    addresses come in the environment instead)."""
    passed: list[str] = []
    for flag, value in (
        ("--config", args.config), ("--agents-file", args.agents_file),
        ("--log-level", args.log_level), ("--log-format", args.log_format),
    ):
        if value is not None:
            passed += [flag, str(value)]
    return passed


def scripted_model_starter() -> StandInModelStarter | None:
    """The built-in scripted test model, when its package can be imported
    (it needs the `testmodel` extra: aiohttp); None otherwise."""
    try:
        from pilothouse.testmodel import start_scripted_model
    except ImportError as exc:
        log.info("the scripted test model is not installed (%s)", exc)
        return None
    return start_scripted_model


def _settings(args: argparse.Namespace) -> Settings | None:
    """The settings, or None (logged) when they are bad."""
    overrides: dict[str, object] = {}
    if args.listen:
        overrides["listen_address"] = args.listen
    if args.agents_file:
        overrides["agents_file"] = args.agents_file
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.log_format:
        overrides["log_format"] = args.log_format
    if args.workers is not None:
        overrides["workers"] = args.workers
    try:
        return load_settings(args.config, **overrides)
    except (pydantic.ValidationError, FileNotFoundError) as exc:
        log.error("bad settings: %s", exc)
        return None


async def _serve(settings: Settings, worker: WorkerRole | None) -> int:
    signals = StopSignals().install()
    configure_tracing(SERVICE_NAME)
    try:
        stand_in = scripted_model_starter() if settings.uses_test_model else None
        if settings.uses_test_model and stand_in is None:
            log.error(
                "cannot start: no model endpoint is configured (PILOTHOUSE_MODEL_BASE_URL) and "
                "the scripted test model is not installed (pip install 'pilothouse[testmodel]')"
            )
            return 1
        app = await start_app(settings, stand_in_model=stand_in, worker=worker)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    if worker is not None:
        worker.ready()
    await signals.stop.wait()
    log.info(
        "shutting down: health NOT_SERVING, new runs refused; active runs get up to %gs",
        settings.shutdown_grace,
    )
    finished = await app.stop(force=signals.force)
    log.info("stopped (%s)", "every run finished" if finished else "remaining runs were cancelled")
    provider = installed_tracer_provider()
    if provider is not None:
        provider.force_flush()  # batched spans go out before the exit
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    configure_logging(
        args.log_level or os.environ.get("PILOTHOUSE_LOG_LEVEL", "INFO"),
        args.log_format or os.environ.get("PILOTHOUSE_LOG_FORMAT", "text"),
    )
    settings = _settings(args)
    if settings is None:
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    worker = WorkerRole.from_env()
    if worker is None and (args.workers is not None or settings.workers != 1):
        sys.exit(run_supervisor(settings, worker_count(settings.workers), _worker_args(args)))
    try:
        sys.exit(eventloop.run(_serve(settings, worker), settings.event_loop))
    except ValueError as exc:  # the loop asked for is not installed
        log.error("bad settings: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
