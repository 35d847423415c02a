"""Server processes of the bench: start, wait until ready, read their memory
and CPU time from /proc, stop. Every process binds to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BENCH = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the servers take
    explicit ports so that the bench knows them before they log anything)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def descendants(pid: int) -> list[int]:
    """The live child processes of `pid`, and theirs (the workers of
    `pilothouse-server --workers`)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found += [int(child), *descendants(int(child))]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its
    live descendants, seconds."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{each}/stat") as stat:
            # The command name may hold spaces: fields are counted after its ')'.
            fields = stat.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Proc:
    """A started server process; its output goes to `log_path`."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    loop: str
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kb(self) -> int:
        """Resident memory of the process and its descendants (workers)."""
        total = 0
        for each in [self.pid, *descendants(self.pid)]:
            with contextlib.suppress(OSError, KeyError):
                total += read_status_kb(each, "VmRSS")
        return total

    def peak_rss_kb(self) -> int:
        """Peak resident memory (VmHWM) of the process and its descendants."""
        total = 0
        for each in [self.pid, *descendants(self.pid)]:
            with contextlib.suppress(OSError, KeyError):
                total += read_status_kb(each, "VmHWM")
        return total

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux `clear_refs` 5) of the
        process and its descendants; false when the kernel refuses, in which
        case the peak is the lifetime peak."""
        try:
            for each in [self.pid, *descendants(self.pid)]:
                with open(f"/proc/{each}/clear_refs", "w") as refs:
                    refs.write("5")
        except OSError:
            return False
        return True

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; log: {self.log_path}\n"
                + tail(self.log_path)
            )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def bench_env(deps: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a bench process: ours, minus settings that would
    point the runtime elsewhere, plus the bench's own packages (uvloop)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PILOTHOUSE_", "OPENAI_", "OTEL_", "LANGSMITH_", "LANGCHAIN_"))
    }
    paths = [str(BENCH)]
    if deps is not None:
        paths.append(str(deps))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_listening(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, loop: str, timeout: float = 30
) -> Proc:
    """Start a process that prints `listening on PORT` when it serves."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log)
    proc = Proc(name, popen, log_path, loop)
    assert popen.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = popen.stdout.readline()
        if line.startswith(b"listening on "):
            proc.port = int(line.split()[-1])
            return proc
        if not line and popen.poll() is not None:
            break
    proc.stop()
    raise RuntimeError(f"{name} did not start: {line!r}\n{tail(log_path)}")


def start_grpc(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, loop: str, port: int,
    timeout: float = 60,
) -> Proc:
    """Start a gRPC server process on `port` and wait for health SERVING."""
    log_path = log_dir / f"{name}.log"
    popen = subprocess.Popen(
        argv, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    proc = Proc(name, popen, log_path, loop, port)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                proc.check_alive()
            except RuntimeError:
                raise
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{name} did not become SERVING in {timeout:g}s\n{tail(log_path)}")
