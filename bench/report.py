"""Render the bench's results (a JSON-able dict built by `run.py`) as the
Markdown report: one table per scenario, the targets, the profiles and what
blocks the targets."""

from __future__ import annotations

import math
from typing import Any

TARGET_TURN_RATIO = 2.0
TARGET_RELAY_SHARE = 0.8
TARGET_TTFE_P99_MS = 50.0
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
        "| side | event loop | store | turns | median ms | p99 ms | x baseline (median) | CPU per turn (ms, by process) | note |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.get("error"):
            out.append(
                f"| {row['label']} | {row['loop']} | | 0 | - | - | - | | **not measured: {row['error']}** |"
            )
            continue
        s = row["summary"]
        ratio = s["median"] / baseline if baseline else None
        out.append(
            f"| {row['label']} | {row['loop']} | {row.get('store', '')} | {s['n']} | {_num(s['median'], 2)} "
            f"| {_num(s['p99'], 2)} | {_num(ratio, 2)}x | {_cpu(row['cpu_ms'])} | {row.get('note', '')} |"
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
        share = f"{s['median'] / base * 100:.0f} %" if base and row["role"] == "pilothouse" else ""
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
        "| simultaneous runs | completed | turns/s | first event p50 ms | first event p99 ms "
        "| run started at the runtime p50 / p99 ms | whole turn p50 / p99 ms | peak RSS runtime MB "
        "| CPU per turn (ms, by process) | errors |",
        "|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for lv in levels:
        peak = _num(lv["peak_rss_mb"], 0) + (" (lifetime)" if lv.get("peak_is_lifetime") else "")
        errors = "; ".join(lv["errors"][:3]) or "none"
        out.append(
            f"| {lv['runs']:,} | {lv['completed']:,} | {_num(lv['turns_per_s'], 0)} "
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
        "| load a 10,000-message session median / p99 ms | note |",
        "|---|---|---|---|",
    ]
    for st in stores:
        if st.get("error"):
            out.append(f"| {st['store']} | - | - | {st['error']} |")
            continue
        a, lo = st["append_us"], st["load_ms"]
        out.append(
            f"| {st['store']} | {_num(a['median'], 0)} / {_num(a['p99'], 0)} (n={a['n']}) "
            f"| {_num(lo['median'], 1)} / {_num(lo['p99'], 1)} (n={lo['n']}) | {st.get('note', '')} |"
        )
    return out


def targets_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("turn", [])
    primary = _find(rows, "pilothouse", primary=True)
    baseline = _median(_find(rows, "baseline"))
    out = ["| target | measured | met |", "|---|---|---|"]

    def line(target: str, measured: str, met: bool | None) -> None:
        verdict = "-" if met is None else ("**yes**" if met else "**no**")
        out.append(f"| {target} | {measured} | {verdict} |")

    p_med = _median(primary)
    if p_med and baseline:
        ratio = p_med / baseline
        line(f"tool-call turn ≤ {TARGET_TURN_RATIO:g}x the raw httpx baseline",
             f"{ratio:.2f}x ({p_med:.2f} vs {baseline:.2f} ms, {primary['loop']}, {primary['store']} store)",
             ratio <= TARGET_TURN_RATIO)
    best = min(
        (r for r in rows if r.get("role") == "pilothouse" and _median(r)), key=_median, default=None
    )
    if best and best is not primary and baseline:
        b = _median(best)
        assert b is not None
        line("… the fastest Pilothouse configuration",
             f"{b / baseline:.2f}x ({best['loop']}, {best['store']} store)", b / baseline <= TARGET_TURN_RATIO)
    for peer in (r for r in rows if r.get("role") == "peer"):
        peer_med = _median(peer)
        if peer_med is None or not p_med:
            line(f"faster than {peer['label']}", f"peer not measured: {peer.get('error')}", None)
        else:
            line(f"faster than {peer['label']} (in-process)",
                 f"{p_med:.2f} vs {peer_med:.2f} ms", p_med < peer_med)
    relay = results.get("relay", [])
    for row in (r for r in relay if r.get("role") == "pilothouse"):
        base = _median(_find(relay, "baseline", pair=row.get("pair")))
        med = _median(row)
        if base and med:
            line(f"token relay ≥ {TARGET_RELAY_SHARE:.0%} of raw grpc.aio ({row['loop']})",
                 f"{med / base:.0%} ({med:,.0f} vs {base:,.0f} events/s)", med / base >= TARGET_RELAY_SHARE)
    top = max(results.get("concurrency", []), key=lambda lv: lv["runs"], default=None)
    if top:
        p99 = top["ttfe_ms"].get("p99", math.nan)
        line(f"{top['runs']:,} concurrent runs, p99 time to first event < {TARGET_TTFE_P99_MS:g} ms",
             f"{_num(p99)} ms ({top['completed']:,} completed, {_num(top['turns_per_s'], 0)} turns/s)",
             top["completed"] == top["runs"] and p99 < TARGET_TTFE_P99_MS)
    memory = results.get("memory", {})
    if memory and not memory.get("error"):
        per_idle = memory["idle_delta_kb"] * 1024 / max(memory["idle_sessions"], 1)
        line(f"≤ {TARGET_IDLE_SESSION_BYTES // 1024} KB per idle session",
             f"{per_idle / 1024:.2f} KB", per_idle <= TARGET_IDLE_SESSION_BYTES)
    return out


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
        f"Event loops: bench client **{env['client_loop']}**; fake model server **{env['model_loop']}**; "
        "runtime and ToolExecutor as named in each row (`asyncio` is the shipped "
        "`python -m pilothouse.app.main`; `uvloop` is the same entry point started by "
        "`bench/serve.py` with uvloop's policy installed); peers **uvloop**. Every process on 127.0.0.1; "
        "the runtime, the ToolExecutor, the model server and the client are separate processes sharing "
        f"the {m['cpus']} cores. Medians and p99 are over the samples of the same run; ratios compare "
        "rows measured in this run. Title generation is off (see `bench/stack.py`).",
        "",
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
        "same size (a real text-delta `StreamToResponse`), decoded by the client the same way. Runtime and "
        "baseline runs alternate.",
        "",
        *relay_table(results.get("relay", [])),
        "",
        "## 3. Concurrency",
        "",
        f"N simultaneous tool-call turns, one session each, on one client channel; the model server "
        f"waits {results['config']['token_delay_ms']:g} ms before every chunk (about 33 chunks a turn). "
        "Time to first event is measured from each call; 'run started at the runtime' is the first "
        "event's own timestamp minus the call's start (same clock).",
        "",
        *concurrency_table(results.get("concurrency", [])),
        "",
        "## 4. Memory",
        "",
        "A freshly started runtime (asyncio, in-memory store); RSS read from /proc after each step settles.",
        "",
        *memory_table(results.get("memory", {})),
        "",
        "## 5. Session stores",
        "",
        "In the bench process, through the stores' own API (as the runtime calls them per run).",
        "",
        *store_table(results.get("store", [])),
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
