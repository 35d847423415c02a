"""`pilothouse-server --workers N`: several runtime processes on one port,
sharing a SQLite file; calls about a run reach the worker that runs it; a
dead worker is started again and takes its run over; SIGTERM drains them
all; a port in use is a clear error instead of a silently shared port.

Everything runs as real processes against the fake model and the test
ToolExecutor of this test process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pilothouse.client import PilothouseClient
from pilothouse.ops.cpus import cgroup_cpu_quota, usable_cpus
from pilothouse.testmodel import Pause, SSEReply, text_reply
from pilothouse.v1 import event_pb2, run_service_pb2
from tests.conftest import collect, wait_until
from tests.test_durable_runs import stored_up_to
from tests.test_durable_sessions import AGENTS, first, free_port, runtime_process, wait_serving


@dataclass
class Workers:
    process: subprocess.Popen
    log: Path
    address: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def internal(self) -> list[str]:
        """The workers' internal addresses, from the supervisor's log."""
        found = re.search(r"internal ports ([0-9.:, ]+)\)", self.text())
        assert found, self.text()
        return [a.strip() for a in found.group(1).split(",")]

    def pids(self, index: int) -> list[int]:
        """Every pid worker `index` has had, in order."""
        return [int(p) for p in re.findall(rf"worker {index} started \(pid (\d+)", self.text())]


def environment(tmp_path: Path, fake_model, tool_server, **env: str) -> dict[str, str]:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    return {
        **os.environ,
        "PILOTHOUSE_MODEL_BASE_URL": fake_model.base_url,
        "PILOTHOUSE_MODEL": "fake-model",
        "PILOTHOUSE_TOOL_EXECUTORS": tool_server.address,
        "PILOTHOUSE_AGENTS_FILE": str(agents),
        "PILOTHOUSE_STORE_URL": "sqlite:///workers.db",
        "PILOTHOUSE_DATA_DIR": str(tmp_path),
        "PILOTHOUSE_GENERATE_TITLES": "false",
        "PILOTHOUSE_METRICS_PORT": "0",
        **env,
    }


@asynccontextmanager
async def workers(tmp_path: Path, fake_model, tool_server, count: int = 2, **env: str) -> AsyncIterator[Workers]:
    """`pilothouse-server --workers count` on a free port, serving."""
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "server.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pilothouse.app.main", "--listen", address, "--workers", str(count)],
        env=environment(tmp_path, fake_model, tool_server, **env), stdout=log, stderr=log,
    )
    running = Workers(process, log_path, address)
    try:
        await wait_serving(address, process)
        for internal in running.internal():
            await wait_serving(internal, process)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def held(reply: SSEReply, release: asyncio.Event, after: int) -> SSEReply:
    return SSEReply([*reply.events[:after], Pause(release), *reply.events[after:]])


async def test_a_call_about_a_run_is_forwarded_to_the_worker_that_runs_it(tmp_path, fake_model, tool_server):
    release = asyncio.Event()
    fake_model.responder.push(held(text_reply("Told by worker zero.", chunk_size=4), release, 2))
    try:
        async with workers(tmp_path, fake_model, tool_server) as running:
            zero, one = running.internal()
            assert zero != one and zero != running.address
            async with PilothouseClient(zero) as a, PilothouseClient(one) as b:
                session = await a.create_session("keeper", "forwarding")
                seen = await first(a.stream_to(session.id, "Tell me"), "text_delta")
                run_id = seen[0].run_id
                record = await b.get_run(run_id)  # from the shared store
                assert record.owner == zero  # each worker advertises its own port
                assert record.status == run_service_pb2.RUN_STATUS_RUNNING
                attached = asyncio.ensure_future(collect(b.attach(session.id, run_id, seen[-1].sequence)))
                await asyncio.sleep(0)
                release.set()
                events = await asyncio.wait_for(attached, 30)
                assert events[0].sequence == seen[-1].sequence + 1
                assert events[-1].done.final_response == "Told by worker zero."
    finally:
        release.set()


async def test_a_killed_worker_is_started_again_and_finishes_its_run(tmp_path, fake_model, tool_server):
    release = asyncio.Event()
    fake_model.responder.push(held(text_reply("Cut short.", chunk_size=4), release, 2))
    try:
        async with workers(tmp_path, fake_model, tool_server, PILOTHOUSE_RESUME_POLL_INTERVAL="0.2") as running:
            zero, _ = running.internal()
            async with PilothouseClient(zero) as a, PilothouseClient(running.address) as public:
                session = await a.create_session("keeper", "restart")
                seen = await first(a.stream_to(session.id, "Tell me a story"), "text_delta")
                run_id = seen[0].run_id
                await stored_up_to("sqlite:///workers.db", tmp_path, run_id, seen[-1].sequence)
                [pid] = running.pids(0)
                os.kill(pid, signal.SIGKILL)
                release.set()
                fake_model.responder.push(text_reply("Finished by the restarted worker."))
                await wait_until(lambda: len(running.pids(0)) == 2, timeout=20, interval=0.05)
                assert running.process.poll() is None  # the supervisor and worker one live on
                assert "worker 0 (pid" in running.text() and "starting it again" in running.text()
                await wait_serving(zero, running.process)
                events = await asyncio.wait_for(
                    collect(public.attach(session.id, run_id, seen[-1].sequence)), 30
                )
                assert events[0].sequence == seen[-1].sequence + 1
                assert events[0].HasField("run_resumed")
                assert events[-1].done.stop_reason == event_pb2.STOP_REASON_TEXT_RESPONSE
                assert events[-1].done.final_response == "Finished by the restarted worker."
                record = await public.get_run(run_id)
                assert record.owner == zero  # the same internal address after the restart
    finally:
        release.set()


async def test_sigterm_drains_every_worker(tmp_path, fake_model, tool_server):
    async with workers(tmp_path, fake_model, tool_server) as running:
        pids = [running.pids(0)[0], running.pids(1)[0]]
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert running.text().count("stopped (every run finished)") == 2


def run_server(tmp_path: Path, fake_model, tool_server, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pilothouse.app.main", *args],
        env=environment(tmp_path, fake_model, tool_server, **env), capture_output=True, text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mode", ["single", "workers"])
async def test_a_port_another_grpc_server_listens_on_is_refused(mode, tmp_path, fake_model, tool_server):
    """grpcio binds with SO_REUSEPORT by default: without the fix a second
    server would silently share the port and take half of its calls."""
    other = grpc.aio.server()  # grpcio's defaults, SO_REUSEPORT included
    port = other.add_insecure_port("127.0.0.1:0")
    await other.start()
    try:
        extra = ["--workers", "2"] if mode == "workers" else []
        done = await asyncio.to_thread(
            run_server, tmp_path, fake_model, tool_server, "--listen", f"127.0.0.1:{port}", *extra
        )
    finally:
        await other.stop(0)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "already in use" in done.stderr


async def test_workers_refuse_a_store_they_cannot_share(tmp_path, fake_model, tool_server):
    done = await asyncio.to_thread(
        run_server, tmp_path, fake_model, tool_server, "--listen", "127.0.0.1:0", "--workers", "2",
        PILOTHOUSE_STORE_URL="memory://",
    )
    assert done.returncode == 1
    assert "workers share the session store" in done.stderr


async def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path, fake_model, tool_server):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[agents]]\nname = 'broken'\ntools = ['no_such_tool']\n")
    done = await asyncio.to_thread(
        run_server, tmp_path, fake_model, tool_server, "--listen", "127.0.0.1:0", "--workers", "2",
        PILOTHOUSE_AGENTS_FILE=str(bad),
    )
    assert done.returncode == 1
    assert "could not start" in done.stderr


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_usable_cpus_follow_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    proc = tmp_path / "cgroup"
    # cgroup v2: the pod's limit is on a parent of the process's cgroup.
    write(proc, "0::/kubepods/pod1/container\n")
    write(tmp_path / "v2" / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    write(tmp_path / "v2" / "kubepods" / "pod1" / "container" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2", proc) == 1.5
    assert usable_cpus(tmp_path / "v2", proc) == min(affinity, 2)
    write(tmp_path / "v2" / "kubepods" / "pod1" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2", proc) is None
    assert usable_cpus(tmp_path / "v2", proc) == affinity
    # cgroup v1, a container that sees its own cgroup as the root.
    write(proc, "4:memory:/\n1:cpu,cpuacct:/\n")
    write(tmp_path / "v1" / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000\n")
    write(tmp_path / "v1" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert usable_cpus(tmp_path / "v1", proc) == 1
    write(tmp_path / "v1" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert usable_cpus(tmp_path / "v1", proc) == affinity


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_server_runs_on_uvloop_unless_told_otherwise(setting, loop, tmp_path, fake_model, tool_server):
    env = {"PILOTHOUSE_EVENT_LOOP": setting} if setting else {}
    async with runtime_process(tmp_path, fake_model, tool_server, "memory://", **env):
        pass
    text = (tmp_path / "server.log").read_text()
    assert re.search(rf"listening on port \d+ .* on {loop} ", text), text
