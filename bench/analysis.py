"""What blocks the targets: numbers from this run's tables and profiles,
put into sentences for the report."""

from __future__ import annotations

from typing import Any

from profiling import Profile

#: Inclusive shares worth naming: (label, regexes that must all match the
#: stack, root first).
FINDINGS: list[tuple[str, tuple[str, ...]]] = [
    ("model call: `ProviderHTTP.stream` and below (HTTP, SSE, JSON, chunks)",
     (r"runtime/model/http\.py",)),
    ("… of which httpx / httpcore / anyio", (r"runtime/model/http\.py", r"/(httpx|httpcore|anyio)/")),
    ("… of which httpcore's failed `import sniffio` (sniffio is not installed)",
     (r"httpcore/_synchronization\.py[^;]*;.*_bootstrap",)),
    ("StreamTo servicer: event → protobuf → gRPC send (`handlers/runs.py` and below)",
     (r"handlers/runs\.py",)),
    ("… of which `convert.event_to_proto`", (r"handlers/convert\.py",)),
    ("tool call over gRPC (`adapters/tool_executor_client.py` and below)",
     (r"adapters/tool_executor_client\.py",)),
    ("session store (`runtime/store/` and below)", (r"runtime/store/",)),
    ("durable event log and checkpoints (`runtime/journal.py` and below)", (r"runtime/journal\.py",)),
    ("logging", (r"/logging/",)),
]


def profile_findings(profile: Profile) -> dict[str, float]:
    return {label: profile.share(*patterns) for label, patterns in FINDINGS}


def _row(rows: list[dict[str, Any]], role: str, **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if row.get("role") == role and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _ok(row: dict[str, Any] | None) -> bool:
    return bool(row) and not row.get("error") and bool(row["summary"].get("n"))  # type: ignore[index]


def analyse(results: dict[str, Any]) -> list[str]:
    """Bullet points with this run's numbers."""
    out: list[str] = []
    turn_rows = results.get("turn", [])
    primary, baseline = _row(turn_rows, "pilothouse", primary=True), _row(turn_rows, "baseline")
    profile = results.get("profiles", {}).get("tool-call turns", {})
    if _ok(primary) and _ok(baseline):
        assert primary is not None and baseline is not None
        p, b = primary["summary"]["median"], baseline["summary"]["median"]
        cpu = primary["cpu_ms"]
        runtime_cpu = next((v for k, v in cpu.items() if k.startswith("runtime") and "tools" not in k), 0.0)
        out.append(
            f"- **Tool-call turn**: {p:.2f} ms against {b:.2f} ms for the two bare model calls, "
            f"{p - b:.2f} ms of overhead ({p / b:.2f}x; the target, 3x, allows {2 * b:.2f} ms). The runtime "
            f"process alone spends {runtime_cpu:.2f} ms of CPU per turn and the gRPC client "
            f"{cpu.get('client', 0):.2f} ms, nearly all of it on the turn's critical path."
        )
        findings = profile.get("findings") or {}
        if findings:
            parts = [
                f"{label.split(':')[0].strip('… ')} {share:.0f} % (≈{share * runtime_cpu / 100:.1f} ms)"
                for label, share in findings.items() if share >= 3
            ]
            telemetry = _area(profile, "OpenTelemetry") + _area(profile, "metrics")
            parts.append(
                f"OpenTelemetry's own code and the metrics interceptor {telemetry:.0f} % "
                f"(≈{telemetry * runtime_cpu / 100:.1f} ms; charged by innermost frame, as the gRPC "
                "instrumentation wraps every call)"
            )
            out.append("  Where the runtime's CPU goes (inclusive shares): " + "; ".join(parts) + ".")
    peers = [r for r in turn_rows if r.get("role") == "peer" and _ok(r)]
    if _ok(primary) and peers:
        assert primary is not None
        p = primary["summary"]["median"]
        faster = [r["label"].removeprefix("peer: ") for r in peers if r["summary"]["median"] < p]
        out.append(
            f"- **Peers**: the peers run the whole turn in one process with the tool as a Python "
            f"call; Pilothouse crosses two gRPC hops and a store and streams every event to a "
            f"separate client ({primary['cpu_ms'].get('client', 0):.1f} ms of client CPU per turn for "
            "about 30 events). "
            + (f"Faster than Pilothouse here: {', '.join(faster)}; closing the gap needs the runtime's "
               "CPU per turn cut by the items below." if faster else "Pilothouse is faster than every peer.")
        )
    loops = {r["loop"]: r for r in turn_rows if r.get("variant") in ("asyncio-sqlite", "uvloop-sqlite") and _ok(r)}
    if {"asyncio", "uvloop"} <= loops.keys():
        a, u = loops["asyncio"]["summary"]["median"], loops["uvloop"]["summary"]["median"]
        out.append(
            f"- **uvloop** under the runtime: {u:.2f} ms a turn against {a:.2f} ms on asyncio "
            f"({abs(a - u) / a:.0%} {'faster' if u < a else 'slower'}; spreads "
            f"{loops['uvloop'].get('spread', 0):.2f} and {loops['asyncio'].get('spread', 0):.2f} ms). "
            "grpc.aio polls in its own thread and hands completions to the loop, so a faster loop "
            "moves little of the runtime's cost. uvloop is the default (PILOTHOUSE_EVENT_LOOP=auto)."
        )
    relay = results.get("relay", [])
    for row in (r for r in relay if r.get("role") == "pilothouse"):
        base = _row(relay, "baseline", pair=row.get("pair"))
        if not (_ok(row) and _ok(base)):
            continue
        assert base is not None
        events = max(row.get("events", 1), 1)
        rt = {k: v * 1000 / events for k, v in row["cpu_ms"].items()}
        raw = {k: v * 1000 / events for k, v in base["cpu_ms"].items()}
        rt_server = next((v for k, v in rt.items() if k.startswith("runtime")), 0.0)
        raw_server = next((v for k, v in raw.items() if k.startswith("rawgrpc")), 0.0)
        share = row["summary"]["median"] / base["summary"]["median"]
        out.append(
            f"- **Token relay ({row['loop']})**: {share:.0%} of the bare grpc.aio rate. Per event the runtime "
            f"spends {rt_server:.0f} µs of CPU where the bare server spends {raw_server:.0f} µs; the client "
            f"spends {rt.get('client', 0):.0f} µs (bare: {raw.get('client', 0):.0f} µs). Whichever of server "
            "and client is slower sets the rate, so the target holds once the runtime's per-event cost "
            "is no higher than the client's."
        )
    native = results.get("profiles", {}).get("token relay, native frames", {})
    bare = results.get("profiles", {}).get("bare grpc.aio server, native frames", {})
    if native.get("cpu_us_per_event") and bare.get("cpu_us_per_event"):
        ours = {g: v * native["cpu_us_per_event"] / 100 for g, v in native["areas"]}
        theirs = {g: v * bare["cpu_us_per_event"] / 100 for g, v in bare["areas"]}
        gaps = sorted(ours, key=lambda g: ours[g] - theirs.get(g, 0.0), reverse=True)[:3]
        syscalls = [g for g in ours if g.startswith(("sendmsg", "write"))]
        out.append(
            f"  Profiled with native frames (py-spy slows both), the runtime spends "
            f"{native['cpu_us_per_event']:.0f} µs per relayed event and the bare server "
            f"{bare['cpu_us_per_event']:.0f} µs. gRPC core's two system calls per message, a `sendmsg` "
            "and an eventfd write to wake its poller, made on the Python thread with the GIL held, are "
            "paid by both ("
            + "; ".join(f"{g.split(':')[0]} {ours[g]:.0f} vs {theirs.get(g, 0.0):.0f} µs" for g in syscalls)
            + "): that is the floor per message. The difference is the runtime's own work: "
            + "; ".join(f"{g.split(' (')[0]} {ours[g]:.0f} vs {theirs.get(g, 0.0):.0f} µs" for g in gaps)
            + ", itemised by the Python-frame profile above."
        )
    levels = [lv for lv in results.get("concurrency", []) if not lv.get("error") and "rate" not in lv]
    if levels:
        top_runs = max(lv["runs"] for lv in levels)
        for top in (lv for lv in levels if lv["runs"] == top_runs):
            runtime_cpu = sum(v for k, v in top["cpu_ms"].items() if k.startswith("runtime") and "tools" not in k)
            cores = results["machine"]["cpus"] or 1
            ceiling = 1000 * min(top.get("workers", 1), cores) / runtime_cpu if runtime_cpu else 0
            out.append(
                f"- **Concurrency, {top['config']} ({top['runs']:,} runs)**: {top['turns_per_s']:.0f} turns/s; "
                f"the runtime spends {runtime_cpu:.1f} ms of CPU per turn, a ceiling of about {ceiling:.0f} "
                f"turns/s on {min(top.get('workers', 1), cores)} core(s) before the ToolExecutor, the model "
                f"server and the client (all on the same {cores} cores) take their share "
                f"({', '.join(f'{k} {v:.1f}' for k, v in top['cpu_ms'].items() if not k.startswith('runtime-c') or 'tools' in k)} ms a turn). "
                f"p99 time to first event {top['ttfe_ms'].get('p99', 0):.0f} ms, of which "
                f"{top['started_ms'].get('p99', 0):.0f} ms before the runtime recorded `run_started`: "
                "with every run admitted at once, each waits behind the CPU the others need."
            )
    return out


def _area(profile: dict[str, Any], prefix: str) -> float:
    return sum(share for area, share in profile.get("areas", []) if area.startswith(prefix))


def _finding(profile: dict[str, Any], prefix: str) -> float:
    return sum(v for k, v in (profile.get("findings") or {}).items() if k.startswith(prefix))


def suggestions(results: dict[str, Any]) -> list[str]:
    """The remaining levers, each with this run's evidence. (Earlier runs'
    suggestions that have been applied: sniffio installed, events counted
    once per stream, no metric exemplars, event-log wake-ups only for waiting
    subscribers, grpc core's pending-call queue raised to 10,000, the memory
    store without deepcopy, uvloop, the aiohttp transport, inline SQLite
    writes, metrics without spans, orjson per chunk and per logged event, the
    model stream read without a pump task.)"""
    profiles = results.get("profiles", {})
    turn = profiles.get("tool-call turns", {})
    levels = results.get("concurrency", [])
    cancelled = sum(sum("CANCELLED" in e for e in lv.get("errors", [])) for lv in levels)
    out = [
        "- **OpenTelemetry** (`ops/telemetry.py`): with no exporter configured the runtime installs "
        "no SDK tracer provider and counts its metrics directly (`runtime/runmetrics.py`), so its "
        f"spans are no-ops; what is left ({_area(turn, 'OpenTelemetry') + _area(turn, 'metrics'):.0f} % "
        "of the runtime's CPU in tool-call turns, innermost frames) is the gRPC instrumentation's "
        "interceptors, which carry a caller's trace context through to the ToolExecutor.",
        "- **The HTTP client** (`runtime/model/http.py`, `aiohttp_transport.py`): "
        f"{_finding(turn, '… of which httpx'):.0f} % of a turn's runtime CPU for two requests, "
        "already over aiohttp; httpcore used directly (no httpx) is what is left to compare.",
        "- **The store per turn** (`runtime/store/`, `runtime/journal.py`): "
        f"{_finding(turn, 'session store'):.0f} % of the runtime's CPU: five checkpoints and the "
        "batched event log per turn, committed on the loop's thread; reads still hop through "
        "aiosqlite's thread.",
        "- **Per-event sends** (`handlers/runs.py`): one gRPC message per event, as the API "
        "promises (every event once, in order); merging a lagging subscriber's backlog of text "
        "deltas would need an opt-in request field.",
        "- **The event loop's hand-offs** per event (gRPC write completions, task steps): the "
        "remaining half of the runtime's CPU, charged to `Runner.run` without native frames.",
    ]
    if cancelled:
        out.append(
            f"- **Calls cancelled in the burst**: {cancelled:,} `StreamTo` calls ended CANCELLED "
            "before reaching the runtime (grpc core's pending-call queue or a 30 s wait)."
        )
    return out
