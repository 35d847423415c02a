"""The processes under test: the fault-injecting model server, a
ToolExecutor and the runtime, each a real process on 127.0.0.1, started,
killed and restarted the way an orchestrator would (SIGTERM, `kill -9`).

`Stack` starts the three with the suite's settings; every piece can be
started again on the same port after it died, as a restarted pod would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

FAULTS = Path(__file__).resolve().parent
REPO = FAULTS.parent
BIN = Path(sys.executable).parent
#: The suite's agent file: one agent without tools (cases make their own).
AGENTS_TOML = '[[agents]]\nname = "faults"\nmodel = "fault.ok"\n'


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without settings that would point a
    server elsewhere, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PILOTHOUSE_", "OPENAI_", "OTEL_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def until_signalled() -> None:
    """Return at the first SIGTERM or SIGINT (the helper servers' main loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def rss_kb(pid: int) -> int:
    """Resident memory of a process, kB (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


@dataclass
class Proc:
    """A server process: `argv` and `env` are kept so that it can be started
    again (on the same port) after a kill."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n--- start {self.starts} ---\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill9(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        assert self.popen is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.popen.wait, timeout)
        return self.popen.poll()

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if not self.alive():
            return self.popen.returncode if self.popen else None
        self.terminate()
        code = await self.wait_exit(timeout)
        if code is None:
            self.kill9()
        return code

    async def wait_serving(self, timeout: float = 60.0, service: str = "") -> None:
        """Until the health service answers SERVING for `service` (""
        the whole server)."""
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=1.0
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become SERVING in {timeout:g}s:\n{self.log_tail()}")

    async def wait_listening(self, timeout: float = 30.0) -> None:
        """Until the port accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen in {timeout:g}s:\n{self.log_tail()}")


def model_proc(work: Path, name: str = "model", wire: str = "openai") -> Proc:
    """The fault-injecting model server, speaking `wire` (openai or anthropic)."""
    port = free_port()
    argv = [sys.executable, str(FAULTS / "faultmodel.py"), "--port", str(port), "--wire", wire]
    return Proc(name, argv, clean_env(), work / f"{name}.log", port)


def tools_proc(work: Path, name: str = "tools", *, toolset: str | None = "a") -> Proc:
    """The suite's ToolExecutor (`toolset` a or b), or with `toolset` None the
    shipped `pilothouse-tools`."""
    port = free_port()
    if toolset is None:
        argv = [str(BIN / "pilothouse-tools"), "--listen", f"127.0.0.1:{port}"]
        env = clean_env(PILOTHOUSE_TOOLS_METRICS_PORT="0")
    else:
        argv = [sys.executable, str(FAULTS / "faulttools.py"), "--listen", f"127.0.0.1:{port}",
                "--toolset", toolset]
        env = clean_env()
    return Proc(name, argv, env, work / f"{name}.log", port)


def runtime_proc(
    work: Path, model: Proc, tools: list[Proc] | None, name: str = "runtime", **settings: str
) -> Proc:
    """`pilothouse-server` on the suite's settings (SQLite in `work`, short
    model read timeout, no titles, no metrics port), overridden by
    `settings` (PILOTHOUSE_ names without the prefix, lower case)."""
    port = free_port()
    agents = work / "agents.toml"
    agents.write_text(AGENTS_TOML)
    values = {
        "listen_address": f"127.0.0.1:{port}",
        "model_base_url": f"http://127.0.0.1:{model.port}/v1",
        "model": "fault.ok",
        "tool_executors": ",".join(t.address for t in tools or []),
        "store_url": "sqlite:///sessions.db",
        "data_dir": str(work),
        "agents_file": str(agents),
        "generate_titles": "false",
        "metrics_port": "0",
        "model_read_timeout": "4",
        "model_max_retries": "2",
        "tool_timeout": "5",
        "tool_discovery_timeout": "3",
        "health_check_interval": "1",
        "shutdown_grace": "5",
        **settings,
    }
    env = clean_env(**{f"PILOTHOUSE_{k.upper()}": v for k, v in values.items()})
    return Proc(name, [str(BIN / "pilothouse-server")], env, work / f"{name}.log", port)


@dataclass
class Stack:
    """A model server, ToolExecutors and a runtime, started in that order."""

    work: Path
    model: Proc
    tools: list[Proc]
    runtime: Proc
    extra: list[Proc] = field(default_factory=list)
    #: False: the ToolExecutors are not started with the stack (absent at start).
    start_tools: bool = True

    @classmethod
    def create(
        cls, work: Path, *, toolset: str | None = "a", start_tools: bool = True, **settings: str
    ) -> Stack:
        work.mkdir(parents=True, exist_ok=True)
        model = model_proc(work)
        tools = [tools_proc(work, toolset=toolset)]
        runtime = runtime_proc(work, model, tools, **settings)
        return cls(work, model, tools, runtime, start_tools=start_tools)

    async def start(self) -> Stack:
        self.model.spawn()
        await self.model.wait_listening()
        if self.start_tools:
            for tools in self.tools:
                tools.spawn()
                await tools.wait_serving()
        await self.start_runtime()
        return self

    async def start_runtime(self, proc: Proc | None = None) -> None:
        proc = proc or self.runtime
        proc.spawn()
        # AgentService depends on nothing: up even while a ToolExecutor is not.
        await proc.wait_serving(service="pilothouse.v1.AgentService")

    async def close(self) -> None:
        for proc in [self.runtime, *self.extra, *self.tools, self.model]:
            await proc.stop(10)

    async def __aenter__(self) -> Stack:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
