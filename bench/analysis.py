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
    ("StreamTo servicer: event → protobuf → gRPC send (`services.py` and below)",
     (r"server/services\.py",)),
    ("… of which `convert.event_to_proto`", (r"server/convert\.py",)),
    ("tool call over gRPC (`tool_client.py` and below)", (r"server/tool_client\.py",)),
    ("session store (`runtime/store/` and below)", (r"runtime/store/",)),
    ("event log (`runs.py`)", (r"runtime/runs\.py",)),
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
            f"{p - b:.2f} ms of overhead ({p / b:.2f}x; the target, 2x, allows {b:.2f} ms). The runtime "
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
    loops = {r["loop"]: r for r in turn_rows if r.get("role") == "pilothouse" and r.get("store") == "sqlite" and _ok(r)}
    if {"asyncio", "uvloop"} <= loops.keys():
        a, u = loops["asyncio"]["summary"]["median"], loops["uvloop"]["summary"]["median"]
        out.append(
            f"- **uvloop** under the runtime: {u:.2f} ms a turn against {a:.2f} ms on asyncio "
            f"({abs(a - u) / a:.0%} {'faster' if u < a else 'slower'}). grpc.aio polls in its own thread and hands completions to the loop, "
            "so a faster loop moves little of the runtime's cost; the model server and the clients run "
            "on uvloop."
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
    levels = results.get("concurrency", [])
    if levels:
        top = max(levels, key=lambda lv: lv["runs"])
        runtime_cpu = next((v for k, v in top["cpu_ms"].items() if k.startswith("runtime") and "tools" not in k), 0.0)
        ceiling = 1000 / runtime_cpu if runtime_cpu else 0
        out.append(
            f"- **Concurrency ({top['runs']:,} runs)**: {top['turns_per_s']:.0f} turns/s; the runtime is one "
            f"Python process on one core and spends {runtime_cpu:.1f} ms of CPU per turn, a ceiling of about "
            f"{ceiling:.0f} turns/s. The first event goes out as soon as a run starts, and p99 time to "
            f"first event is {top['ttfe_ms'].get('p99', 0):.0f} ms of which {top['started_ms'].get('p99', 0):.0f} ms "
            "(p99) passed before the runtime recorded `run_started`: the wait is before the run starts "
            "(the call being taken up, then the session read and the run lease). grpc.aio's server takes new calls from its main-loop coroutine one at a "
            "time, and with hundreds of runs streaming every turn of the event loop is long, so the "
            "wait grows with the number of runs in flight (compare the rows). "
            "Under 50 ms at this scale needs several runtime processes (or far less CPU per event)."
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
    store without deepcopy.)"""
    profiles = results.get("profiles", {})
    turn, relay = profiles.get("tool-call turns", {}), profiles.get("token relay", {})
    levels = results.get("concurrency", [])
    cancelled = sum(sum("CANCELLED" in e for e in lv["errors"]) for lv in levels)
    out = [
        "- **Telemetry recorded for the metrics** (`server/telemetry.py`, `server/metrics.py`): "
        f"OpenTelemetry is {_area(turn, 'OpenTelemetry') + _area(turn, 'metrics'):.0f} % of the "
        f"runtime's CPU in tool-call turns and "
        f"{_area(relay, 'OpenTelemetry') + _area(relay, 'metrics'):.0f} % in the relay (samples "
        "charged to their innermost frame). Spans are recorded even with no exporter because the "
        "Prometheus metrics are derived from them; counting the same figures in the runtime "
        "directly (an observer per run) would let unexported spans be no-ops.",
        "- **The HTTP client itself** (`runtime/model/openai.py`): httpx + httpcore + anyio are "
        f"{_finding(turn, '… of which httpx'):.0f} % of a turn's runtime CPU for two requests. A "
        "client with less machinery per request (aiohttp, already a dependency, is a candidate; "
        "not measured here) is the largest remaining lever.",
        "- **Per-event sends** (`server/services.py`): `StreamTo` converts and sends one message per "
        "event; the bare grpc.aio stream costs about the same per message as the runtime's gRPC "
        "part (the floor). When a subscriber lags, sending the backlog of text deltas it finds as "
        "one `text_delta` (their concatenation: the text is the same) would cut messages by the "
        "backlog, at the cost of an API-visible change.",
        "- **One process, one core** (`server/main.py`): the runtime's CPU per turn sets its "
        "ceiling (see the concurrency rows); grpc.aio enables SO_REUSEPORT, so several runtime "
        "processes could serve one port with the shared SQLite/PostgreSQL store (the run lease "
        "already makes sessions safe across replicas, and the agent registry is in the store too). "
        "p99 time to first event under 50 ms for 2,000 simultaneous "
        "runs also needs each turn to cost several times less CPU.",
    ]
    if cancelled:
        out.append(
            f"- **Calls cancelled in the burst**: {cancelled:,} `StreamTo` calls ended CANCELLED "
            "before reaching the runtime (grpc core's pending-call queue or a 30 s wait)."
        )
    return out
