"""Render the bench's results (a JSON-able dict built by `run.py`) as the
Markdown report: one table per scenario, the targets, the profiles and what
blocks the targets."""

from __future__ import annotations

import math
from typing import Any

# Issue 16's targets.
TARGET_TURN_CPU_MS = 5.0
TARGET_TURN_RATIO = 3.0
TARGET_PEER_SPEEDUP = 2.0
TARGET_RELAY_CPU_RATIO = 1.2
TARGET_WORKER_SCALING = 1.8
TARGET_TURNS_PER_S = 150.0
TARGET_TTFE_P99_MS = 50.0
# Issue 9's and issue 12's.
TARGET_DURABLE_RELAY = 0.9
TARGET_DURABLE_TURN = 0.10
TARGET_SOAK_GROWTH = 0.10
TARGET_IDLE_SESSION_BYTES = 10 * 1024


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _cpu(cpu: dict[str, float], per: str = "ms") -> str:
    return ", ".join(f"{name} {_num(value, 2)}" for name, value in cpu.items()) + f" {per}"


def _find(rows: list[dict[str, Any]], role: str, **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if row.get("role") == role and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _median(row: dict[str, Any] | None) -> float | None:
    if not row or row.get("error") or not row["summary"].get("n"):
        return None
    return row["summary"]["median"]


def turn_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["Not run (`--only`)."]
    baseline = _median(_find(rows, "baseline"))
    out = [
        "| side | event loop | store | turns | median ms | p99 ms | spread ms | x baseline (median) | CPU per turn (ms, by process) | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.get("error"):
            out.append(
                f"| {row['label']} | {row['loop']} | | 0 | - | - | - | - | | **not measured: {row['error']}** |"
            )
            continue
        s = row["summary"]
        ratio = s["median"] / baseline if baseline else None
        label = row["label"] + (f" `{row['variant']}`" if row.get("variant") else "")
        out.append(
            f"| {label} | {row['loop']} | {row.get('store', '')} | {s['n']} | {_num(s['median'], 2)} "
            f"| {_num(s['p99'], 2)} | {_num(row.get('spread'), 2)} | {_num(ratio, 2)}x "
            f"| {_cpu(row['cpu_ms'])} | {row.get('note', '')} |"
        )
    return out


def relay_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["Not run (`--only`)."]
    out = [
        "| side | event loop | runs | median events/s | worst run events/s | share of baseline (median) | CPU per event (µs, by process) | note |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        s = row["summary"]
        base = _median(_find(rows, "baseline", pair=row.get("pair")))
        share = f"{s['median'] / base * 100:.0f} %" if base and row["role"] in ("pilothouse", "merged") else ""
        events = max(row.get("events", 1), 1)
        cpu = {k: v * 1000 / events for k, v in row["cpu_ms"].items()}
        out.append(
            f"| {row['label']} | {row['loop']} | {s['n']} | {_num(s['median'], 0)} | {_num(s['min'], 0)} "
            f"| {share} | {_cpu(cpu, 'µs')} | {row.get('note', '')} |"
        )
    return out


def concurrency_table(levels: list[dict[str, Any]]) -> list[str]:
    if not levels:
        return ["Not run (`--only`)."]
    out = [
        "| runtime | simultaneous runs | completed | turns/s | first event p50 ms | first event p99 ms "
        "| run started at the runtime p50 / p99 ms | whole turn p50 / p99 ms | peak RSS runtime MB "
        "| CPU per turn (ms, by process) | errors |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for lv in levels:
        if lv.get("error"):
            out.append(f"| {lv['config']} | {lv['runs']:,} | - | - | - | - | - | - | - | - | {lv['error']} |")
            continue
        peak = _num(lv["peak_rss_mb"], 0) + (" (lifetime)" if lv.get("peak_is_lifetime") else "")
        errors = "; ".join(lv["errors"][:3]) or "none"
        out.append(
            f"| {lv.get('config', '')} | {lv['runs']:,} | {lv['completed']:,} | {_num(lv['turns_per_s'], 0)} "
            f"| {_num(lv['ttfe_ms'].get('median'))} | {_num(lv['ttfe_ms'].get('p99'))} "
            f"| {_num(lv['started_ms'].get('median'))} / {_num(lv['started_ms'].get('p99'))} "
            f"| {_num(lv['turn_ms'].get('median'))} / {_num(lv['turn_ms'].get('p99'))} "
            f"| {peak} | {_cpu(lv['cpu_ms'])} | {errors} |"
        )
    return out


def memory_table(memory: dict[str, Any]) -> list[str]:
    if not memory:
        return ["Not run (`--only`)."]
    if memory.get("error"):
        return [f"Not measured: {memory['error']}"]
    per_idle = memory["idle_delta_kb"] * 1024 / max(memory["idle_sessions"], 1)
    per_stream = memory["active_delta_kb"] * 1024 / max(memory["active_streams"], 1)
    return [
        "| what | count | runtime RSS growth | per item |",
        "|---|---:|---:|---:|",
        f"| idle in-memory sessions (no history) | {memory['idle_sessions']:,} "
        f"| {memory['idle_delta_kb'] / 1024:.1f} MB | {per_idle / 1024:.2f} KB |",
        f"| active streams (run mid-model-stream + gRPC stream) | {memory['active_streams']:,} "
        f"| {memory['active_delta_kb'] / 1024:.1f} MB | {per_stream / 1024:.1f} KB |",
    ] + ([f"\n{memory['note']}"] if memory.get("note") else [])


def store_table(stores: list[dict[str, Any]]) -> list[str]:
    if not stores:
        return ["Not run (`--only`)."]
    out = [
        "| store | store one durable tool-call turn (begin_run + 2 checkpoints + final, "
        "4 messages, 30 events) median / p99 µs "
        "| one checkpoint (a round) median / p99 µs "
        "| load a 10,000-message session median / p99 ms | note |",
        "|---|---|---|---|---|",
    ]
    for st in stores:
        if st.get("error"):
            out.append(f"| {st['store']} | - | - | - | {st['error']} |")
            continue
        a, lo, c = st["append_us"], st["load_ms"], st.get("checkpoint_us") or {"n": 0}
        out.append(
            f"| {st['store']} | {_num(a['median'], 0)} / {_num(a['p99'], 0)} (n={a['n']}) "
            f"| {_num(c.get('median'), 0)} / {_num(c.get('p99'), 0)} (n={c['n']}) "
            f"| {_num(lo['median'], 1)} / {_num(lo['p99'], 1)} (n={lo['n']}) | {st.get('note', '')} |"
        )
    return out


def _runtime_cpu(cpu: dict[str, float]) -> float | None:
    return next((v for k, v in cpu.items() if k.startswith("runtime") and "tools" not in k), None)


def _verdict(met: bool | None, tie: bool = False) -> str:
    if met is None:
        return "-"
    if tie:
        return "**tie** (so not met)"
    return "**yes**" if met else "**no**"


def targets_table(results: dict[str, Any]) -> list[str]:
    """Issue 16's, issue 9's and issue 12's targets with this run's
    figures; comparisons between rows say "tie" when their difference is
    within the rows' spread (the largest minus the smallest block median)."""
    rows = results.get("turn", [])
    primary = _find(rows, "pilothouse", primary=True)
    baseline = _median(_find(rows, "baseline"))
    out = ["| target | measured | met |", "|---|---|---|"]

    def line(target: str, measured: str, met: bool | None, tie: bool = False) -> None:
        out.append(f"| {target} | {measured} | {_verdict(met, tie)} |")

    p_med = _median(primary)
    p_cpu = _runtime_cpu(primary["cpu_ms"]) if primary and p_med else None
    where = f"{primary['loop']}, {primary['store']} store" if primary else ""
    if p_cpu is not None:
        line(f"runtime CPU per tool-call turn ≤ {TARGET_TURN_CPU_MS:g} ms", f"{p_cpu:.2f} ms ({where})",
             p_cpu <= TARGET_TURN_CPU_MS)
    if p_med and baseline:
        ratio = p_med / baseline
        line(f"tool-call turn ≤ {TARGET_TURN_RATIO:g}x the raw model calls",
             f"{ratio:.2f}x ({p_med:.2f} vs {baseline:.2f} ms)", ratio <= TARGET_TURN_RATIO)
    peers = [r for r in rows if r.get("role") == "peer" and _median(r)]
    if peers and p_med:
        fastest = min(peers, key=lambda r: _median(r) or math.inf)
        f_med = _median(fastest) or math.nan
        spread = max(primary.get("spread", 0.0), fastest.get("spread", 0.0)) if primary else 0.0
        tie = abs(f_med - p_med) <= spread
        line(f"≥ {TARGET_PEER_SPEEDUP:g}x faster than the faster peer ({fastest['label']})",
             f"{f_med / p_med:.2f}x ({p_med:.2f} vs {f_med:.2f} ms; spread {spread:.2f} ms)"
             + ("; a tie within the spread" if tie else ""),
             f_med / p_med >= TARGET_PEER_SPEEDUP, tie and f_med / p_med < TARGET_PEER_SPEEDUP)
    for peer in (r for r in rows if r.get("role") == "peer"):
        if not _median(peer):
            line(f"{peer['label']} measured", f"not measured: {peer.get('error')}", None)
    relay = results.get("relay", [])
    if primary:
        ours = _find(relay, "pilothouse", pair=primary.get("variant"))
        bare = _find(relay, "baseline", pair=primary.get("variant"))
        if ours and bare and _median(ours) and _median(bare):
            events = max(ours.get("events", 1), 1)
            ours_us = (_runtime_cpu(ours["cpu_ms"]) or 0) * 1000 / events
            bare_us = next((v for k, v in bare["cpu_ms"].items() if k.startswith("rawgrpc")), 0) * 1000 / events
            if bare_us:
                line(f"relay: runtime CPU per event ≤ {TARGET_RELAY_CPU_RATIO:g}x a bare grpc.aio server "
                     "building each message", f"{ours_us / bare_us:.2f}x ({ours_us:.0f} vs {bare_us:.0f} µs)",
                     ours_us / bare_us <= TARGET_RELAY_CPU_RATIO)
        durable = _find(relay, "pilothouse", store="sqlite")
        memory = _find(relay, "pilothouse", store="memory")
        if durable and memory and _median(durable) and _median(memory):
            share = (_median(durable) or 0) / (_median(memory) or 1)
            line(f"relay with the durable event log ≥ {TARGET_DURABLE_RELAY:.0%} of in-memory (issue 9)",
                 f"{share:.1%} ({_median(durable):,.0f} vs {_median(memory):,.0f} events/s)",
                 share >= TARGET_DURABLE_RELAY)
    memory_row = _find(rows, "pilothouse", store="memory")
    if primary and memory_row and p_med and _median(memory_row):
        m_med = _median(memory_row) or math.nan
        growth = p_med / m_med - 1
        spread = max(primary.get("spread", 0.0), memory_row.get("spread", 0.0))
        within = abs(p_med - m_med) <= spread
        line(f"durable tool-call turn ≤ +{TARGET_DURABLE_TURN:.0%} vs the non-durable one (issue 9)",
             f"{growth:+.0%} ({p_med:.2f} vs {m_med:.2f} ms; spread {spread:.2f} ms)"
             + ("; within the spread" if within else ""),
             growth <= TARGET_DURABLE_TURN)
    for st in results.get("store", []):
        if st.get("checkpoint_us", {}).get("n"):
            c = st["checkpoint_us"]
            line(f"checkpoint cost per round, {st['store']} (issue 9; reported)",
                 f"{_num(c['median'], 0)} µs median, {_num(c['p99'], 0)} µs p99", None)
    levels = results.get("concurrency", [])
    closed = [lv for lv in levels if "rate" not in lv and not lv.get("error")]
    if closed:
        top = max(lv["runs"] for lv in closed)
        one = next((lv for lv in closed if lv["runs"] == top and lv.get("workers") == 1), None)
        many = next((lv for lv in closed if lv["runs"] == top and lv.get("workers", 1) > 1
                     and lv.get("store") == "sqlite"), None)
        if one and many and one["turns_per_s"]:
            gain = many["turns_per_s"] / one["turns_per_s"]
            line(f"throughput at {top:,} simultaneous turns, 1 → {many['workers']} workers ≥ "
                 f"{TARGET_WORKER_SCALING:g}x", f"{gain:.2f}x ({one['turns_per_s']:.0f} → "
                 f"{many['turns_per_s']:.0f} turns/s)", gain >= TARGET_WORKER_SCALING)
        best = max((lv for lv in closed if lv["runs"] == top), key=lambda lv: lv["turns_per_s"])
        line(f"≥ {TARGET_TURNS_PER_S:g} tool-call turns/s on this machine (5 ms a chunk)",
             f"{best['turns_per_s']:.0f} turns/s ({best['config']}, {top:,} simultaneous)",
             best["turns_per_s"] >= TARGET_TURNS_PER_S)
    for lv in (lv for lv in levels if "rate" in lv):
        p99 = lv["ttfe_ms"].get("p99", math.nan)
        line(f"p99 time to first event < {TARGET_TTFE_P99_MS:g} ms at {lv['rate']:g} turns/s",
             f"{_num(p99)} ms ({lv['config']}; {lv['completed']:,} of {lv['runs']:,} completed, "
             f"{lv['turns_per_s']:.0f} turns/s)", lv["completed"] == lv["runs"] and p99 < TARGET_TTFE_P99_MS)
    soak = results.get("soak", {})
    if soak.get("rss_mb"):
        marks = list(soak["rss_mb"].items())
        (first_n, first_mb), (last_n, last_mb) = marks[0], marks[-1]
        growth = last_mb / first_mb - 1 if first_mb else math.nan
        line(f"soak: RSS after {int(last_n):,} runs within {TARGET_SOAK_GROWTH:.0%} of after "
             f"{int(first_n):,} (issue 12)", f"{growth:+.1%} ({first_mb:.0f} → {last_mb:.0f} MB)",
             growth <= TARGET_SOAK_GROWTH)
    memory = results.get("memory", {})
    if memory and not memory.get("error"):
        per_idle = memory["idle_delta_kb"] * 1024 / max(memory["idle_sessions"], 1)
        line(f"≤ {TARGET_IDLE_SESSION_BYTES // 1024} KB per idle session",
             f"{per_idle / 1024:.2f} KB", per_idle <= TARGET_IDLE_SESSION_BYTES)
    return out


def soak_table(soak: dict[str, Any]) -> list[str]:
    if not soak:
        return ["Not run (`--only`)."]
    out = ["| tool-call turns run | runtime RSS MB |", "|---:|---:|"]
    out += [f"| {int(n):,} | {mb:.1f} |" for n, mb in soak["rss_mb"].items()]
    return [*out, "", f"{soak['seconds']:.0f} s in all, 8 turns in flight, a new session each."]


def profile_section(name: str, profile: dict[str, Any]) -> list[str]:
    if profile.get("error"):
        return [f"**{name}**: not profiled ({profile['error']})."]
    if not profile.get("functions"):  # a native profile: groups of leaf frames only
        per_event = profile.get("cpu_us_per_event")
        return [
            f"**{name}** — {profile['samples']:,} samples ({profile.get('what', '')}), each charged to "
            "the frame the CPU was in"
            + (f"; the process spent {per_event:.0f} µs of CPU per event:" if per_event else ":"),
            "",
            "| where | share of the process's CPU | µs per event |",
            "|---|---:|---:|",
            *(
                f"| {group} | {share:.1f} % | {share * per_event / 100 if per_event else 0:.1f} |"
                for group, share in profile["areas"]
            ),
        ]
    out = [
        f"**{name}** — {profile['samples']:,} samples of the runtime process while it held the GIL "
        f"({profile.get('what', '')}). Each sample is charged to the innermost frame of a known area:",
        "",
        "| area | share of runtime CPU |",
        "|---|---:|",
    ]
    out += [f"| {area} | {share:.1f} % |" for area, share in profile["areas"] if share >= 0.5]
    out += ["", "Top functions by self time (native code is charged to its Python caller; "
            "`Handle._run`/`Runner.run` is the event loop running C callbacks, mostly gRPC's Cython "
            "completion callbacks and task steps):", "", "| function | self |", "|---|---:|"]
    out += [f"| `{fn}` | {share:.1f} % |" for fn, share in profile["functions"]]
    if profile.get("findings"):
        out += ["", "Inclusive shares (the frames and everything they called):", "",
                "| what | share of runtime CPU |", "|---|---:|"]
        out += [f"| {what} | {share:.1f} % |" for what, share in profile["findings"].items()]
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    env = results["environment"]
    lines = [
        "# Pilothouse benchmarks",
        "",
        f"Generated {results['generated']} by `make bench` ({results['duration_s']:.0f} s) at "
        f"`{m['commit']}`, on {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']:.0f} GiB RAM, "
        f"Python {m['python']}, Linux {m['kernel']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}, "
        f"httpx {m['httpx']}.",
        "",
        f"Event loops: every side on **{env['client_loop']}** unless a row says otherwise: the bench "
        f"client, the fake model server ({env['model_loop']}), the baselines, the runtime and its "
        "ToolExecutor (the shipped `python -m pilothouse.app.main`, PILOTHOUSE_EVENT_LOOP), the peers. "
        "Every process on 127.0.0.1; the runtime, the ToolExecutor, the model server and the client are "
        f"separate processes sharing the {m['cpus']} cores (with other engineers' work: figures are "
        "noisy, see each row's spread, the largest minus the smallest of its per-round medians). "
        "Medians and p99 are over the samples of the same run; ratios compare rows measured in this run. "
        "Title generation is off except in the `defaults` row (see `bench/stack.py`).",
        "",
        *([f"![make bench chart]({results['chart']})", ""] if results.get("chart", "").endswith(".png")
          else [f"Chart {results.get('chart', 'not drawn')}.", ""]),
        "## 1. Tool-call turn",
        "",
        "One user message → the model streams a `calculate` call → the ToolExecutor runs it → the model "
        "streams a 20-token answer; a new session per turn (constant history). Pilothouse is timed at the "
        "gRPC client, `StreamTo` until `done`. The baseline replays the runtime's own two request bodies "
        "with httpx, reading every line and JSON-decoding every chunk. The peers run the same turn "
        "in-process against the same model server.",
        "",
        *turn_table(results.get("turn", [])),
        "",
        "## 2. Token relay",
        "",
        "One run streaming 10,000 text deltas, received by the Python client; the baseline is a bare "
        "grpc.aio server-streaming method in its own process sending the same number of messages of the "
        "same size (a real text-delta `StreamToResponse`), each built for its event (its own "
        "`AgentEvent`, sequence and time) as the runtime must, decoded by the client the same way. "
        "Runtime and baseline runs alternate; the `memory` pair is the relay without the durable event log. "
        "The `merge_deltas` rows are the same runs with that stream option: the deltas waiting when the "
        "server writes go as one message (rates count the run's events, the note the messages received).",
        "",
        *relay_table(results.get("relay", [])),
        "",
        "## 3. Concurrency",
        "",
        f"N simultaneous tool-call turns, one session each, on one client channel per replica, on one "
        "runtime process, on `pilothouse-server --workers N` (one port, one SQLite file) and on two "
        "replicas sharing PostgreSQL; the open-loop row starts a turn at a fixed rate instead. The model server "
        f"waits {results['config']['token_delay_ms']:g} ms before every chunk (about 33 chunks a turn). "
        "Time to first event is measured from each call; 'run started at the runtime' is the first "
        "event's own timestamp minus the call's start (same clock).",
        "",
        *concurrency_table(results.get("concurrency", [])),
        "",
        "## 4. Memory",
        "",
        "A freshly started runtime (uvloop, in-memory store); RSS read from /proc after each step settles.",
        "",
        *memory_table(results.get("memory", {})),
        "",
        "## 5. Session stores",
        "",
        "In the bench process, through the stores' own API (as the runtime calls them per run).",
        "",
        *store_table(results.get("store", [])),
        "",
        "## 6. Soak",
        "",
        "Tool-call turns one after another on a fresh runtime (SQLite store): its RSS after each count.",
        "",
        *soak_table(results.get("soak", {})),
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Where the runtime's time goes (py-spy)",
        "",
    ]
    for name, profile in results.get("profiles", {}).items():
        lines += [*profile_section(name, profile), ""]
    if results.get("analysis"):
        lines += ["## What blocks the targets, and by how much", "", *results["analysis"], ""]
    if results.get("suggestions"):
        lines += ["## Remaining levers", "", *results["suggestions"], ""]
    if env.get("peers"):
        lines += ["## Environment", ""]
        for peer, status in env["peers"].items():
            state = "installed" if status["ok"] else f"NOT installed: {status['detail']}"
            lines.append(f"- {peer}: {state} (bench/.venv-peers)")
        lines.append(f"- uvloop, py-spy: {env['deps']} (bench/.deps)")
        lines.append("")
    lines.append("Reproduce: `make bench` (details and options: `.venv/bin/python bench/run.py --help`).")
    return "\n".join(lines) + "\n"
