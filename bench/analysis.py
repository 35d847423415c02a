"""What blocks the targets: numbers from this run's tables and profiles,
put into sentences for the report."""

from __future__ import annotations

from typing import Any

from profiling import Profile

#: Inclusive shares worth naming: (label, regexes that must all match the
#: stack, root first).
FINDINGS: list[tuple[str, tuple[str, ...]]] = [
    ("model call: `OpenAIChatModel.stream` and below (HTTP, SSE, JSON, chunks)",
     (r"runtime/model/openai\.py",)),
    ("… of which httpx / httpcore / anyio", (r"runtime/model/openai\.py", r"/(httpx|httpcore|anyio)/")),
    ("… of which httpcore's failed `import sniffio` (sniffio is not installed)",
     (r"httpcore/_synchronization\.py[^;]*;.*_bootstrap",)),
    ("StreamTo servicer: event → protobuf → gRPC send (`services.py` and below)",
     (r"server/services\.py",)),
    ("… of which `convert.event_to_proto`", (r"server/convert\.py",)),
    ("tool call over gRPC (`tool_client.py` and below)", (r"server/tool_client\.py",)),
    ("session store (`runtime/store/` and below)", (r"runtime/store/",)),
    ("OpenTelemetry spans", (r"/opentelemetry/",)),
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
            out.append("  Where the runtime's CPU goes (inclusive shares): " + "; ".join(parts) + ".")
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
    levels = results.get("concurrency", [])
    if levels:
        top = max(levels, key=lambda lv: lv["runs"])
        runtime_cpu = next((v for k, v in top["cpu_ms"].items() if k.startswith("runtime") and "tools" not in k), 0.0)
        ceiling = 1000 / runtime_cpu if runtime_cpu else 0
        out.append(
            f"- **Concurrency ({top['runs']:,} runs)**: {top['turns_per_s']:.0f} turns/s; the runtime is one "
            f"Python process on one core and spends {runtime_cpu:.1f} ms of CPU per turn, a ceiling of about "
            f"{ceiling:.0f} turns/s. Starting {top['runs']:,} runs at once queues their first events behind "
            f"that work: p99 time to first event {top['ttfe_ms'].get('p99', 0):.0f} ms, of which the wait "
            f"before the runtime recorded `run_started` is {top['started_ms'].get('p99', 0):.0f} ms (p99). "
            "Under 50 ms at this scale needs several runtime processes (or far less CPU per event)."
        )
    return out
