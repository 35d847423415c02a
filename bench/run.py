"""`make bench`: Pilothouse's overhead against the raw model calls and
against peer frameworks, measured side by side in one run.

Starts every process it measures itself (the fake model server, the
reference ToolExecutor and the runtime as separate processes on 127.0.0.1,
like production), runs five scenarios (tool-call turn, token relay,
concurrency, memory, session stores), profiles the runtime with py-spy,
and prints a Markdown report, also written to `bench/results/latest.md`
with the raw numbers in `bench/results/latest.json`.

The first run creates `bench/.deps` (uvloop, py-spy) and
`bench/.venv-peers` (the peer frameworks) from PyPI; later runs reuse them.
A peer that cannot be installed is reported as such. Every load loop is
bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import analysis  # noqa: E402  (the bench's modules live beside this script)
import chart  # noqa: E402
import concurrency  # noqa: E402
import envs  # noqa: E402
import memory  # noqa: E402
import relay  # noqa: E402
import report  # noqa: E402
import store  # noqa: E402
import turn  # noqa: E402
from procs import bench_env, start_listening  # noqa: E402
from profiling import Profile, Sampler  # noqa: E402
from stack import Paths, Runtime, start_model_server, start_runtime  # noqa: E402
from stats import summary  # noqa: E402

T = TypeVar("T")
RESULTS = BENCH / "results"
RELAY_EVENTS = 10_006  # per relay run: 10,000 deltas and the run's other events
#: Scenario 1 runs every side this many times in turn.
ROUNDS = 3
WORK = BENCH / ".work"


@dataclass(frozen=True)
class Config:
    """How much of each scenario to run (every loop also has a time bound)."""

    turns: int = 300
    warmup: int = 10
    seconds: float = 25.0
    peer_turns: int = 200
    relay_runs: int = 7
    levels: tuple[int, ...] = (100, 500, 1000)
    level_timeout_s: float = 180.0
    #: Workers of the multi-worker rows (`pilothouse-server --workers N`).
    workers: int = 2
    #: The open-loop rate of the first-event latency target, turns/s, and its length, s.
    rate: float = 75.0
    rate_seconds: float = 10.0
    soak_marks: tuple[int, ...] = (1_000, 2_500, 5_000, 10_000)
    token_delay_ms: float = 5.0
    idle_sessions: int = 10_000
    active_streams: int = 500
    store_appends: int = 500
    store_loads: int = 10
    store_history: int = 10_000
    profile_turns: int = 300


QUICK = Config(
    turns=60, warmup=5, seconds=10.0, peer_turns=40, relay_runs=3, levels=(100, 500),
    idle_sessions=2_000, active_streams=100, store_appends=100, store_loads=3, profile_turns=60,
    rate_seconds=4.0, soak_marks=(200, 1_000, 2_000),
)


@dataclass(frozen=True)
class Variant:
    """One way of running the runtime in scenario 1 (and 2): its event
    loop, store, and PILOTHOUSE_* settings over the bench's."""

    name: str
    loop: str
    store: str
    settings: tuple[tuple[str, str], ...] = ()
    note: str = ""
    primary: bool = False
    relay: bool = False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer frameworks")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--only", nargs="*", default=[],
        choices=["turn", "relay", "concurrency", "memory", "store", "soak"],
        help="run only these scenarios",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    parser.add_argument(
        "--render", type=Path, metavar="JSON",
        help="only render the report and chart again from a results file of an earlier run",
    )
    return parser.parse_args()


def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown",
    )
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit or "unknown",
        "grpcio": md.version("grpcio"),
        "protobuf": md.version("protobuf"),
        "httpx": md.version("httpx"),
    }


def row(
    measured: turn.Measured, role: str, blocks: list[turn.Measured] | None = None, **extra: Any
) -> dict[str, Any]:
    """A table row from a measurement, as JSON-able data; with `blocks`
    (the rounds it was measured in), their medians and spread (the largest
    minus the smallest), against which differences are judged."""
    data = asdict(measured)
    samples = data.pop("samples_ms")
    medians = [summary(b.samples_ms)["median"] for b in blocks or [] if b.samples_ms]
    spread = max(medians) - min(medians) if len(medians) > 1 else 0.0
    return {**data, "role": role, "summary": summary(samples), "block_medians": medians,
            "spread": spread, **extra}


class Bench:
    """The processes and settings one `make bench` run shares."""

    def __init__(self, config: Config, paths: Paths, client_loop: str) -> None:
        self.config = config
        self.paths = paths
        self.client_loop = client_loop
        self.model_loop = "uvloop" if paths.deps else "asyncio"
        self.stopping: list[Any] = []

    def arun(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the bench client on its event loop."""
        if self.client_loop == "uvloop":
            import uvloop

            return uvloop.run(coroutine)
        return asyncio.run(coroutine)

    def store_url(self, kind: str) -> str:
        if kind == "memory":
            return "memory://"
        path = self.paths.work / f"sessions-{len(self.stopping)}-{time.monotonic_ns()}.db"
        return f"sqlite:///{path}"

    def runtime(
        self, loop: str, store_kind: str, name: str, *, workers: int = 0, **settings: str
    ) -> Runtime:
        url = store_kind if "://" in store_kind else self.store_url(store_kind)
        rt = start_runtime(self.paths, self.model, loop, url, name, workers=workers, **settings)
        self.stopping.append(rt)
        return rt

    def start(self) -> None:
        print(f"[bench] starting the fake model server ({self.model_loop})", flush=True)
        self.model = start_model_server(self.paths, self.model_loop, self.config.token_delay_ms)
        self.stopping.append(self.model)

    def stop_all(self) -> None:
        for proc in reversed(self.stopping):
            with contextlib.suppress(Exception):
                proc.stop()


def scenario_turn(
    bench: Bench, variants: list[Variant], peers: dict[str, envs.Installed]
) -> list[dict[str, Any]]:
    """Every side in `ROUNDS` rounds, one block of turns each per round, so
    that a slower or faster spell of the machine touches every row alike
    (the ratios are what matter)."""
    cfg = bench.config
    model = bench.model
    base_url = model.extra["base_url"]
    runtimes = {}
    for variant in variants:
        print(f"[bench] starting runtime {variant.name}", flush=True)
        runtimes[variant] = bench.runtime(
            variant.loop, variant.store, f"runtime-{variant.name}", **dict(variant.settings)
        )
    blocks: dict[str, list[turn.Measured]] = {}
    per_round = max(cfg.turns // ROUNDS, 1)
    peer_turns = max(cfg.peer_turns // ROUNDS, 1)
    seconds = cfg.seconds / ROUNDS
    peer_env = bench_env(None)
    for index in range(ROUNDS):
        print(f"[bench] tool-call turns, round {index + 1} of {ROUNDS}", flush=True)
        for variant, rt in runtimes.items():
            measured = bench.arun(
                turn.measure_pilothouse(
                    rt.address, variant.loop, [rt.runtime, rt.tools, model], per_round, cfg.warmup, seconds
                )
            )
            blocks.setdefault(variant.name, []).append(measured)
        # The recorded request bodies come from the runtime's turns above.
        blocks.setdefault("baseline", []).append(
            bench.arun(turn.measure_httpx(base_url, bench.client_loop, model, per_round, cfg.warmup, seconds))
        )
        blocks.setdefault("raw", []).append(
            bench.arun(
                turn.measure_httpx(base_url, bench.client_loop, model, per_round, cfg.warmup, seconds, raw=True)
            )
        )
        for peer, status in peers.items():
            if status.ok:
                blocks.setdefault(peer, []).append(
                    turn.measure_peer(peer, base_url, model, peer_turns, cfg.warmup, seconds, peer_env)
                )
    for rt in runtimes.values():
        rt.stop()
    rows = []
    for v in variants:
        merged = turn.merge(blocks[v.name])
        merged.note = v.note
        rows.append(row(merged, "pilothouse", blocks[v.name], store=v.store, primary=v.primary,
                        variant=v.name))
    rows.append(row(turn.merge(blocks["baseline"]), "baseline", blocks["baseline"]))
    rows.append(row(turn.merge(blocks["raw"]), "model", blocks["raw"]))
    for peer, status in peers.items():
        if status.ok:
            rows.append(row(turn.merge(blocks[peer]), "peer", blocks[peer]))
        else:
            rows.append(row(turn.Measured(f"peer: {peer}", "uvloop", error=status.detail), "peer"))
    return rows


def scenario_relay(bench: Bench, variants: list[Variant]) -> list[dict[str, Any]]:
    cfg = bench.config
    model = bench.model
    rows: list[dict[str, Any]] = []
    for variant in (v for v in variants if v.relay):
        label = variant.name
        print(f"[bench] token relay, runtime {label}", flush=True)
        rt = bench.runtime(
            variant.loop, variant.store, f"runtime-relay-{label}", **dict(variant.settings)
        )
        raw = start_listening(
            f"rawgrpc-{variant.loop}",
            [sys.executable, str(BENCH / "rawgrpc.py"), "--loop", variant.loop],
            bench_env(bench.paths.deps), bench.paths.work, variant.loop,
        )
        bench.stopping.append(raw)
        try:
            runtime_row, baseline_row, merged_row = bench.arun(
                relay.measure_pair(rt.address, [rt.runtime, model], raw, variant.loop, cfg.relay_runs)
            )
        finally:
            raw.stop()
            rt.stop()
        events = int(runtime_row.note.split()[0])
        rows.append(row(runtime_row, "pilothouse", pair=label, events=events, store=variant.store,
                        variant=label))
        rows.append(row(baseline_row, "baseline", pair=label, events=events))
        rows.append(row(merged_row, "merged", pair=label, events=events, store=variant.store,
                        variant=label))
    source = bench.arun(relay.measure_model_source(model.extra["base_url"], model.loop, model, cfg.relay_runs))
    rows.append(row(source, "model", events=RELAY_EVENTS))
    return rows


def scenario_concurrency(bench: Bench) -> list[dict[str, Any]]:
    """The levels of simultaneous runs on one worker and on N workers
    (SQLite file), the largest level on two replicas sharing PostgreSQL,
    and the open-loop rate on N workers."""
    cfg = bench.config
    levels: list[dict[str, Any]] = []
    configs: list[tuple[str, dict[str, Any]]] = [
        ("1 worker, sqlite", {"workers": 0}),
        (f"{cfg.workers} workers, sqlite", {"workers": cfg.workers}),
    ]
    for config, options in configs:
        rt = bench.runtime("uvloop", "sqlite", f"runtime-concurrency-{options['workers']}", **options)
        try:
            for runs in cfg.levels:
                print(f"[bench] {runs} simultaneous runs, {config}", flush=True)
                level = bench.arun(
                    concurrency.measure_level(
                        [rt.address], [rt.runtime], [rt.tools, bench.model], runs, cfg.level_timeout_s
                    )
                )
                levels.append({**asdict(level), "config": config, "workers": options["workers"] or 1,
                               "loop": "uvloop", "store": "sqlite"})
            if options["workers"]:
                print(f"[bench] {cfg.rate:g} turns/s open-loop, {config}", flush=True)
                level = bench.arun(concurrency.measure_rate(
                    rt.address, [rt.runtime, rt.tools, bench.model], cfg.rate, cfg.rate_seconds,
                    cfg.level_timeout_s,
                ))
                levels.append({**asdict(level), "config": f"{config}, {cfg.rate:g} turns/s open-loop",
                               "workers": options["workers"], "rate": cfg.rate, "loop": "uvloop",
                               "store": "sqlite"})
        finally:
            rt.stop()
    levels += _replicas_on_postgres(bench, max(cfg.levels))
    return levels


def _replicas_on_postgres(bench: Bench, runs: int) -> list[dict[str, Any]]:
    """`runs` simultaneous runs spread over two replicas (separate
    processes) sharing one PostgreSQL database."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.pg import start_pg_server
    except ImportError as exc:
        return [{"config": "2 replicas, postgresql", "runs": runs, "error": str(exc)}]
    pg = start_pg_server()
    if pg is None:
        return [{"config": "2 replicas, postgresql", "runs": runs, "error": "PostgreSQL binaries not found"}]
    replicas: list[Runtime] = []
    try:
        dsn = bench.arun(pg.new_database())
        for index in range(2):
            replicas.append(bench.runtime("uvloop", dsn, f"runtime-replica-{index}"))
        print(f"[bench] {runs} simultaneous runs, 2 replicas on PostgreSQL", flush=True)
        level = bench.arun(concurrency.measure_level(
            [r.address for r in replicas], [r.runtime for r in replicas],
            [*(r.tools for r in replicas), bench.model], runs, bench.config.level_timeout_s,
        ))
        return [{**asdict(level), "config": "2 replicas, postgresql", "workers": 2, "loop": "uvloop",
                 "store": "postgresql"}]
    finally:
        for replica in replicas:
            replica.stop()
        pg.stop()


def scenario_soak(bench: Bench) -> dict[str, Any]:
    """RSS of a runtime after each of `soak_marks` tool-call turns."""
    marks = list(bench.config.soak_marks)
    print(f"[bench] soak: {marks[-1]:,} runs", flush=True)
    rt = bench.runtime("uvloop", "sqlite", "runtime-soak")
    try:
        started = time.monotonic()
        rss = bench.arun(concurrency.soak(rt.address, rt.runtime, marks))
        return {"rss_mb": rss, "seconds": time.monotonic() - started}
    finally:
        rt.stop()


def scenario_memory(bench: Bench) -> dict[str, Any]:
    print("[bench] memory", flush=True)
    rt = bench.runtime("uvloop", "memory", "runtime-memory")
    try:
        result = bench.arun(
            memory.measure_memory(
                rt.address, rt.runtime, bench.model.extra["base_url"], bench.config.idle_sessions,
                bench.config.active_streams, 60.0,
            )
        )
    finally:
        rt.stop()
    return asdict(result)


def scenario_store(bench: Bench) -> list[dict[str, Any]]:
    print("[bench] session stores", flush=True)
    cfg = bench.config
    results = bench.arun(
        store.measure_all(bench.paths.work, cfg.store_appends, cfg.store_loads, cfg.store_history, 20.0)
    )
    return [asdict(r) for r in results]


def profile_runtime(bench: Bench, variant: Variant) -> dict[str, dict[str, Any]]:
    """py-spy on a fresh runtime: sequential tool-call turns, then relay runs."""
    py_spy = bench.paths.deps / "bin" / "py-spy" if bench.paths.deps else None
    if py_spy is None or not py_spy.exists():
        return {"tool-call turns": {"error": "py-spy is not installed"}}
    print("[bench] profiling the runtime with py-spy", flush=True)
    rt = bench.runtime(variant.loop, variant.store, "runtime-profile", **dict(variant.settings))
    cfg = bench.config
    profiles: dict[str, dict[str, Any]] = {}
    try:
        procs = [rt.runtime]
        # Warm up first so that one-off imports and caches are not profiled.
        bench.arun(turn.measure_pilothouse(rt.address, variant.loop, procs, 10, 10, cfg.seconds))
        sampler = Sampler(py_spy, rt.runtime.pid, bench.paths.work / "profile-turn.txt")
        time.sleep(0.5)
        bench.arun(turn.measure_pilothouse(rt.address, variant.loop, procs, cfg.profile_turns, 0, cfg.seconds))
        profiles["tool-call turns"] = _profile_data(
            sampler.stop(), f"{cfg.profile_turns} sequential turns, runtime on {variant.loop}, "
            f"{variant.store} store"
        )
        sampler = Sampler(py_spy, rt.runtime.pid, bench.paths.work / "profile-relay.txt")
        time.sleep(0.5)
        bench.arun(_relay_runs(rt.address, 3))
        profiles["token relay"] = _profile_data(sampler.stop(), f"3 relay runs of 10,000 deltas, {variant.loop}")
        # Native frames too: what the event loop's C callbacks spend (above,
        # `Handle._run` self time) is mostly gRPC core's system calls; the
        # bare grpc.aio server is profiled the same way for comparison.
        sampler = Sampler(py_spy, rt.runtime.pid, bench.paths.work / "profile-relay-native.txt", native=True)
        time.sleep(0.5)
        before = rt.runtime.cpu_s()
        bench.arun(_relay_runs(rt.address, 3))
        cpu_us = (rt.runtime.cpu_s() - before) * 1e6 / (3 * RELAY_EVENTS)
        profiles["token relay, native frames"] = _profile_data(
            sampler.stop(), f"3 relay runs, {variant.loop}, py-spy --native, grouped by leaf frame",
            cpu_us,
        )
        raw = start_listening(
            "rawgrpc-profile", [sys.executable, str(BENCH / "rawgrpc.py"), "--loop", variant.loop],
            bench_env(bench.paths.deps), bench.paths.work, variant.loop,
        )
        bench.stopping.append(raw)
        sampler = Sampler(py_spy, raw.pid, bench.paths.work / "profile-raw-native.txt", native=True)
        time.sleep(0.5)
        before = raw.cpu_s()
        events = bench.arun(relay.template_and_raw_runs(rt.address, raw.port, 3))
        cpu_us = (raw.cpu_s() - before) * 1e6 / (3 * events)
        profiles["bare grpc.aio server, native frames"] = _profile_data(
            sampler.stop(), f"3 runs of the relay baseline, {variant.loop}, py-spy --native", cpu_us
        )
        raw.stop()
    finally:
        rt.stop()
    return profiles


async def _relay_runs(address: str, runs: int) -> None:
    from pilothouse.client import PilothouseClient

    async with PilothouseClient(address) as client:
        for session_id in await turn.create_sessions(client, relay.w.AGENT_RELAY, runs):
            async for _ in client.stream_to(session_id, relay.w.USER_MESSAGE, timeout=relay.w.RUN_DEADLINE_S):
                pass


def _profile_data(profile: Profile, what: str, cpu_us_per_event: float | None = None) -> dict[str, Any]:
    data = {k: v for k, v in asdict(profile).items() if k != "stacks"}
    data["what"] = what
    data["cpu_us_per_event"] = cpu_us_per_event
    data["findings"] = analysis.profile_findings(profile) if profile.functions else {}
    return data


def write_report(results: dict[str, Any], output: Path) -> str:
    """The chart, the JSON and the Markdown report beside each other."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(_json(results))
    try:
        results["chart"] = chart.write(results, output.with_suffix(".png"))
    except Exception as exc:  # a chart must not lose the figures
        results["chart"] = f"not drawn: {type(exc).__name__}: {exc}"
    output.with_suffix(".json").write_text(_json(results))
    markdown = report.render(results)
    output.write_text(markdown)
    return markdown


def main() -> None:
    args = parse_args()
    if args.render:
        import json

        sys.path.insert(0, str(envs.DEPS))
        results = json.loads(args.render.read_text())
        results["analysis"] = analysis.analyse(results)
        results["suggestions"] = analysis.suggestions(results)
        write_report(results, args.output)
        print(f"[bench] written to {args.output}", flush=True)
        return
    config = QUICK if args.quick else Config()
    started = time.monotonic()
    deps = envs.ensure_deps()
    if deps.ok:
        sys.path.insert(0, str(envs.DEPS))
    else:
        print(f"[bench] uvloop/py-spy unavailable ({deps.detail}); running on asyncio only", flush=True)
    peers = envs.ensure_peers(skip=args.no_peers)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    paths = Paths(WORK, envs.DEPS if deps.ok else None)
    client_loop = "uvloop" if deps.ok else "asyncio"
    loop = client_loop  # every side on the same loop: client, model server, runtime, peers
    titles_off = (("PILOTHOUSE_GENERATE_TITLES", "false"),)
    variants = [
        Variant(f"{loop}-sqlite", loop, "sqlite", titles_off, primary=True, relay=True),
        Variant(f"{loop}-memory", loop, "memory", titles_off, note="not durable", relay=True),
        Variant(f"{loop}-sqlite-nocache", loop, "sqlite",
                (*titles_off, ("PILOTHOUSE_SESSION_CACHE_SIZE", "0")),
                note="history read from SQLite each turn (no session cache)"),
        Variant(f"{loop}-sqlite-defaults", loop, "sqlite", (("PILOTHOUSE_GENERATE_TITLES", "true"),),
                note="default settings: a title generated per new session"),
    ]
    if loop == "uvloop":
        variants.append(Variant("asyncio-sqlite", "asyncio", "sqlite", titles_off,
                                note="runtime and ToolExecutor on asyncio"))
    only = set(args.only) or {"turn", "relay", "concurrency", "memory", "store", "soak"}

    bench = Bench(config, paths, client_loop)
    results: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": asdict(config),
        "environment": {
            "client_loop": client_loop,
            "model_loop": bench.model_loop,
            "deps": "installed" if deps.ok else f"missing: {deps.detail}",
            "peers": {k: asdict(v) for k, v in peers.items()},
        },
    }
    try:
        bench.start()
        if "turn" in only:
            results["turn"] = scenario_turn(bench, variants, peers)
        if "relay" in only:
            results["relay"] = scenario_relay(bench, variants)
        if "concurrency" in only:
            results["concurrency"] = scenario_concurrency(bench)
        if "memory" in only:
            results["memory"] = scenario_memory(bench)
        if "store" in only:
            results["store"] = scenario_store(bench)
        if "soak" in only:
            results["soak"] = scenario_soak(bench)
        if not args.no_profile:
            results["profiles"] = profile_runtime(bench, variants[0])
    finally:
        bench.stop_all()
    results["duration_s"] = time.monotonic() - started
    results["analysis"] = analysis.analyse(results)
    results["suggestions"] = analysis.suggestions(results)
    markdown = write_report(results, args.output)
    print(markdown)
    print(f"[bench] written to {args.output} and {args.output.with_suffix('.json')}", flush=True)


def _json(results: dict[str, Any]) -> str:
    import json

    return json.dumps(results, indent=1, default=str) + "\n"


if __name__ == "__main__":
    main()
