"""Start the ToolExecutor and the runtime together, for `make run` and
`make demo`.

    python -m pilothouse.devstack run    # both servers in the foreground
    python -m pilothouse.devstack demo   # start both, chat once, stop both

Ports come from PILOTHOUSE_LISTEN_ADDRESS (default 127.0.0.1:50051) and
PILOTHOUSE_TOOLS_LISTEN_ADDRESS (default 127.0.0.1:50052); the runtime is
pointed at the ToolExecutor it starts. `run` also opens the web port, with
the web console (PILOTHOUSE_WEB_LISTEN_ADDRESS, default 127.0.0.1:50080;
set it empty for none). In `demo` the servers log to
files under `--log-dir` (default `$PILOTHOUSE_DATA_DIR/logs`, `data/logs`),
named at the start, so only the conversation reaches the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEMO_MESSAGE = "What is 17 * 23 + 4, and what time is it in UTC?"
#: The web port of `make run` (browsers and the web console).
WEB_ADDRESS = "127.0.0.1:50080"


def wait_serving(address: str, timeout: float, process: subprocess.Popen) -> None:
    """Block until `address` answers health SERVING. Raises RuntimeError if
    the process exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{address}: process exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{address} did not become SERVING within {timeout:g}s")


def _start(module: str, env: dict[str, str], log: IO[bytes] | None = None) -> subprocess.Popen:
    """Start `module`; its output goes to `log` (else this terminal)."""
    return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log,
                            stderr=subprocess.STDOUT if log else None)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen, name: str) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    print(f"[devstack] {name} exited with {process.returncode}", flush=True)
    return process.returncode


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pilothouse.devstack")
    parser.add_argument("mode", choices=["run", "demo"])
    parser.add_argument("--message", default=DEMO_MESSAGE)
    parser.add_argument("--log-dir", type=Path, help="where `demo` writes the servers' logs")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    tools_address = env.setdefault("PILOTHOUSE_TOOLS_LISTEN_ADDRESS", "127.0.0.1:50052")
    server_address = env.setdefault("PILOTHOUSE_LISTEN_ADDRESS", "127.0.0.1:50051")
    env.setdefault("PILOTHOUSE_TOOL_EXECUTORS", tools_address)
    if args.mode == "run":
        env.setdefault("PILOTHOUSE_WEB_LISTEN_ADDRESS", WEB_ADDRESS)
    logs: dict[str, Path] = {}
    if args.mode == "demo":
        log_dir = args.log_dir or Path(env.get("PILOTHOUSE_DATA_DIR", "data")) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        logs = {"tools": log_dir / "tools.log", "runtime": log_dir / "runtime.log"}
        print(f"[devstack] server logs: {logs['runtime']} and {logs['tools']}", flush=True)
    with contextlib.ExitStack() as files:
        log_of = {name: files.enter_context(path.open("wb")) for name, path in logs.items()}
        code = _serve_and_chat(args, env, tools_address, server_address, log_of)
        if code and logs:
            for path in logs.values():
                print(f"[devstack] last lines of {path}:\n{_tail(path)}", file=sys.stderr)
    sys.exit(code)


def _serve_and_chat(args: argparse.Namespace, env: dict[str, str], tools_address: str,
                    server_address: str, log_of: Mapping[str, IO[bytes]]) -> int:
    tools = _start("pilothouse.toolexecutor.main", env, log_of.get("tools"))
    server = None
    code = 0
    try:
        wait_serving(tools_address, 30, tools)
        server = _start("pilothouse.app.main", env, log_of.get("runtime"))
        wait_serving(server_address, 30, server)
        if args.mode == "run":
            web = env.get("PILOTHOUSE_WEB_LISTEN_ADDRESS", "")
            console = f", web console on http://{web}/" if web else ""
            print(f"[devstack] runtime on {server_address}, tools on {tools_address}{console}; "
                  "Ctrl-C stops", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)
            with contextlib.suppress(KeyboardInterrupt):
                while server.poll() is None and tools.poll() is None:
                    time.sleep(0.5)
        else:
            cli = [sys.executable, "-m", "pilothouse.client.cli", "--server", server_address]
            print(f"[devstack] $ pilothouse chat --agent assistant {args.message!r}", flush=True)
            code = subprocess.call([*cli, "chat", "--agent", "assistant", "--new", args.message], env=env)
            if code == 0:
                print("[devstack] a follow-up message, each event printed as JSON (--json):",
                      flush=True)
                code = subprocess.call(
                    [*cli, "chat", "--agent", "assistant", "--json", "Thanks! Summarise that."],
                    env=env,
                )
    except RuntimeError as exc:
        print(f"[devstack] {exc}", file=sys.stderr)
        code = 1
    finally:
        stopped = [_stop(server, "runtime")] if server is not None else []
        stopped.append(_stop(tools, "tools"))
    if code == 0 and any(stopped):
        code = 1
    return code


if __name__ == "__main__":
    main()
