"""`pilothouse-server --workers N`: N runtime processes on one host, one port.

One Python process runs on one core; the workers use them all. The
supervisor (this module, the process started as `pilothouse-server`) binds
nothing that serves: it reserves the public ports with SO_REUSEPORT (the
gRPC port, and the web, A2A and health ports when set; port 0 is resolved
to a free port here, once, for all workers), reserves one internal port per
worker, and starts the workers as `python -m pilothouse.app.main` with
`PILOTHOUSE_WORKER_*` set. Each worker binds the public ports with
SO_REUSEPORT (the kernel spreads new connections over the workers) and its
own internal port, and advertises the internal one to the other workers and
replicas (in run records, as PILOTHOUSE_ADVERTISE_ADDRESS would), so a call
about a run that reaches another worker is forwarded to the worker that
runs it. The workers share the store: a SQLite file (WAL) or PostgreSQL.

A worker that dies (crash, `kill -9`, OOM) is started again on the same
internal port, so it takes its runs over at once. A worker that exits with
1 or 2 before it ever served (bad agents file, bad settings) stops them
all, with that exit code. SIGTERM or SIGINT is passed to every worker (each
drains, see `pilothouse.app.main`); a second one is passed too (force).
Prometheus metrics: worker i serves PILOTHOUSE_METRICS_PORT + i.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pilothouse.app.settings import Settings
from pilothouse.ops.cpus import usable_cpus

log = logging.getLogger("pilothouse.workers")

#: Environment of a worker (set by the supervisor only).
ENV_INDEX = "PILOTHOUSE_WORKER_INDEX"
ENV_ADDRESS = "PILOTHOUSE_WORKER_LISTEN_ADDRESS"
ENV_READY_FD = "PILOTHOUSE_WORKER_READY_FD"
#: Seconds between checks of the workers.
POLL_S = 0.1
#: Restart back-off: first delay, cap, and the uptime that resets it, seconds.
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 30.0
STABLE_S = 60.0


def worker_count(setting: int | str) -> int:
    """The number of workers a `workers` setting asks for ("auto": the
    CPUs this process may use)."""
    return usable_cpus() if setting == "auto" else int(setting)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process is told by its supervisor."""

    index: int
    #: host:port of this worker's own port, advertised to the others.
    address: str
    ready_fd: int = -1

    @classmethod
    def from_env(cls) -> WorkerRole | None:
        """This process's role, None when it is not a worker."""
        address = os.environ.get(ENV_ADDRESS, "")
        if not address:
            return None
        return cls(int(os.environ.get(ENV_INDEX, "0")), address, int(os.environ.get(ENV_READY_FD, "-1")))

    def ready(self) -> None:
        """Tell the supervisor this worker serves."""
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; ValueError if bad."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reserve(address: str, what: str) -> tuple[socket.socket, str]:
    """A bound (not listening) SO_REUSEPORT socket holding `address`'s port
    for the workers, and the address with its port resolved. OSError naming
    `what` when the port is in use by anything else."""
    host, port = split_host_port(address)
    bind_host = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    if port:
        # A plain bind first: SO_REUSEPORT would share a port another
        # server (grpcio sets SO_REUSEPORT by default) already listens on.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bind_host, port))
            except OSError as exc:
                cause = (
                    "the address is already in use (is another server listening there?)"
                    if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                )
                raise OSError(f"cannot listen on {address} ({what}): {cause}") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind_host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address} ({what}): {exc.strerror or exc}") from exc
    return sock, join_host_port(host, sock.getsockname()[1])


@dataclass(slots=True)
class Worker:
    index: int
    address: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    ready_r: int = -1
    ready: bool = False
    started_at: float = 0.0
    delay_s: float = RESTART_DELAY_S
    restart_at: float = 0.0
    exit_code: int | None = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(slots=True)
class Supervisor:
    """Starts, watches and stops the workers (see the module docstring)."""

    settings: Settings
    count: int
    #: Command-line arguments passed on to every worker (--config, ...).
    worker_args: list[str]
    workers: list[Worker] = field(default_factory=list)
    held: list[socket.socket] = field(default_factory=list)
    signals: int = 0
    forwarded: int = 0
    #: The gRPC port's address, its port resolved (set by `prepare`).
    public_address: str = ""

    def prepare(self) -> None:
        """Reserve the ports. OSError when one is in use, ValueError for a
        store the workers cannot share."""
        if self.settings.store_url.startswith("memory:"):
            raise ValueError(
                "workers share the session store: PILOTHOUSE_STORE_URL must be a SQLite file "
                "(sqlite:///...) or PostgreSQL, not memory://"
            )
        shared: dict[str, str] = {}
        for name, what in (
            ("listen_address", "the gRPC port"), ("web_listen_address", "the web port"),
            ("a2a_listen_address", "the A2A port"), ("health_listen_address", "the health port"),
        ):
            address = getattr(self.settings, name)
            if address:
                sock, resolved = reserve(address, what)
                self.held.append(sock)
                shared[f"PILOTHOUSE_{name.upper()}"] = resolved
        self.public_address = shared["PILOTHOUSE_LISTEN_ADDRESS"]
        host, _ = split_host_port(self.public_address)
        for index in range(self.count):
            sock, internal = reserve(join_host_port(host, 0), f"worker {index}'s port")
            self.held.append(sock)
            env = {
                **os.environ, **shared,
                "PILOTHOUSE_WORKERS": "1",
                ENV_INDEX: str(index),
                ENV_ADDRESS: internal,
                "PILOTHOUSE_METRICS_PORT": str(
                    self.settings.metrics_port + index if self.settings.metrics_port else 0
                ),
            }
            self.workers.append(Worker(index, internal, env))

    def run(self) -> int:
        """Start the workers and watch them until they have all stopped;
        the exit code (0 when every worker drained cleanly)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "pilothouse-server: %d workers on %s (internal ports %s)", self.count,
            self.public_address, ", ".join(w.address for w in self.workers),
        )
        for worker in self.workers:
            self._start(worker)
        failed: int | None = None
        while True:
            if self.forwarded < self.signals:
                self.forwarded += 1
                for worker in self._alive():
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            now = time.monotonic()
            for worker in self.workers:
                self._check(worker, now)
                code = worker.exit_code
                if code is not None and not worker.ready and code in (1, 2) and failed is None:
                    log.error("worker %d could not start (exit code %d): stopping", worker.index, code)
                    failed = code
                    self.signals = max(self.signals, 1)
            if self.signals and not self._alive():
                break
            time.sleep(POLL_S)
        for sock in self.held:
            sock.close()
        if failed is not None:
            return failed
        return 0 if all(w.exit_code == 0 for w in self.workers) else 1

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def _check(self, worker: Worker, now: float) -> None:
        if worker.ready_r >= 0:
            with contextlib.suppress(BlockingIOError):
                worker.ready = bool(os.read(worker.ready_r, 64))
                os.close(worker.ready_r)
                worker.ready_r = -1
        process = worker.process
        if process is None:
            if not self.signals and now >= worker.restart_at:
                self._start(worker)
            return
        code = process.poll()
        if code is None:
            return
        worker.process = None
        worker.exit_code = code
        if worker.ready_r >= 0:
            os.close(worker.ready_r)
            worker.ready_r = -1
        if self.signals:
            log.info("worker %d stopped (exit code %d)", worker.index, code)
            return
        if not worker.ready and code in (1, 2):
            return  # run() stops everything
        if now - worker.started_at > STABLE_S:
            worker.delay_s = RESTART_DELAY_S
        log.warning(
            "worker %d (pid %d) exited with %d: starting it again in %gs", worker.index, process.pid,
            code, worker.delay_s,
        )
        worker.restart_at = now + worker.delay_s
        worker.delay_s = min(worker.delay_s * 2, RESTART_DELAY_MAX_S)

    def _start(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = {**worker.env, ENV_READY_FD: str(write_fd)}
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "pilothouse.app.main", *self.worker_args], env=env,
            pass_fds=(write_fd,), start_new_session=True, preexec_fn=_die_with_parent,
        )
        os.close(write_fd)
        worker.ready_r, worker.ready, worker.exit_code = read_fd, False, None
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d, internal address %s)", worker.index, worker.process.pid,
                 worker.address)

    def _on_signal(self, sig: int, _frame: object) -> None:
        self.signals += 1


def run_supervisor(settings: Settings, count: int, worker_args: list[str]) -> int:
    """Run `count` workers until a signal stops them; the exit code (1 when
    the ports cannot be reserved or the store cannot be shared)."""
    supervisor = Supervisor(settings, count, worker_args)
    try:
        supervisor.prepare()
    except (OSError, ValueError) as exc:
        for sock in supervisor.held:
            sock.close()
        log.error("cannot start: %s", exc)
        return 1
    return supervisor.run()
