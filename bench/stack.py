"""Start the processes under test: the fake model server, the reference
ToolExecutor and the runtime, each in its own process as in production."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import workload as w
from procs import BENCH, Proc, bench_env, free_port, start_grpc, start_listening


@dataclass
class Paths:
    """Where the bench writes its logs and files, and where uvloop is."""

    work: Path
    deps: Path | None


def start_model_server(paths: Paths, loop: str, token_delay_ms: float, name: str = "model") -> Proc:
    argv = [
        sys.executable, str(BENCH / "fakemodel.py"), "--loop", loop,
        "--token-delay-ms", str(token_delay_ms),
    ]
    proc = start_listening(name, argv, bench_env(paths.deps), paths.work, loop)
    proc.extra["base_url"] = f"http://127.0.0.1:{proc.port}/v1"
    return proc


def _server_argv(module: str, *args: str) -> list[str]:
    # Exactly the production entry point; the loop is PILOTHOUSE_EVENT_LOOP.
    return [sys.executable, "-m", module, *args]


@dataclass
class Runtime:
    """A running ToolExecutor and runtime pair."""

    tools: Proc
    runtime: Proc
    loop: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.runtime.port}"

    def stop(self) -> None:
        self.runtime.stop()
        self.tools.stop()


def start_runtime(
    paths: Paths, model: Proc, loop: str, store_url: str, name: str = "runtime",
    *, workers: int = 0, **settings: str,
) -> Runtime:
    """The ToolExecutor, then the runtime pointed at it and at `model`, storing sessions in
    `store_url`, both on the event loop `loop` (PILOTHOUSE_EVENT_LOOP).
    Title generation is off unless `settings` (more PILOTHOUSE_*
    variables) say otherwise: it is one extra model call per new session,
    and the bench opens a new session for every turn only to keep the
    history (and so the request) constant. `workers` > 0 runs
    `pilothouse-server --workers N`."""
    agents_file = paths.work / "agents.toml"
    agents_file.write_text(w.agents_toml())
    tools_port = free_port()
    tools_env = bench_env(
        paths.deps, PILOTHOUSE_TOOLS_LISTEN_ADDRESS=f"127.0.0.1:{tools_port}"
    )
    tools_env["PILOTHOUSE_EVENT_LOOP"] = loop
    tools = start_grpc(
        f"{name}-tools", _server_argv("pilothouse.toolexecutor.main"), tools_env,
        paths.work, loop, tools_port,
    )
    port = free_port()
    env = bench_env(
        paths.deps,
        PILOTHOUSE_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        PILOTHOUSE_MODEL_BASE_URL=model.extra["base_url"],
        PILOTHOUSE_MODEL=w.MODEL_TURN,
        PILOTHOUSE_TOOL_EXECUTORS=f"127.0.0.1:{tools_port}",
        PILOTHOUSE_AGENTS_FILE=str(agents_file),
        PILOTHOUSE_STORE_URL=store_url,
        PILOTHOUSE_DATA_DIR=str(paths.work),
        PILOTHOUSE_GENERATE_TITLES="false",
        # The Prometheus endpoint stays on, as by default, on a port of its own
        # (the default one may be taken by another runtime on this machine).
        PILOTHOUSE_METRICS_PORT=str(free_port()),
        PILOTHOUSE_EVENT_LOOP=loop,
    )
    env.update(settings)
    argv = _server_argv("pilothouse.app.main", *(["--workers", str(workers)] if workers else []))
    try:
        runtime = start_grpc(name, argv, env, paths.work, loop, port)
    except BaseException:
        tools.stop()
        raise
    return Runtime(tools, runtime, loop)
