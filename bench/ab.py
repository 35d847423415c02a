"""A/B of the tool-call turn: two runtimes side by side, turn blocks
interleaved, so that a change's effect on the runtime's CPU per turn can be
told apart from the machine's own drift (on a shared VM the speed moves by
tens of percent within minutes, which swamps a 5-10 % change measured in
two separate `make bench` runs).

A is the tree at `--ref` (checked out into a git worktree under
`bench/.work/ab/`), or this tree with `--env-a` settings; B is this working
tree with `--env-b` settings. Both serve the same fake model server; each
has its own ToolExecutor. Blocks run in the order A B B A A B ..., and the
report gives, per side, the median over blocks of the runtime's CPU per turn
and of the turn's wall time, with the median of the per-pair ratios B/A.

    .venv/bin/python bench/ab.py --ref HEAD~1             # last commit's effect
    .venv/bin/python bench/ab.py --env-b PILOTHOUSE_X=1   # a setting's effect
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import envs  # noqa: E402
import turn  # noqa: E402
import workload as w  # noqa: E402
from procs import bench_env  # noqa: E402
from stack import Paths, Runtime, start_model_server, start_runtime  # noqa: E402

from pilothouse.client import PilothouseClient  # noqa: E402

WORK = BENCH / ".work" / "ab"


def settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"not KEY=VALUE: {pair!r}")
        out[key] = value
    return out


def worktree(ref: str) -> Path:
    """A detached worktree of `ref` (removed again when the A/B ends)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    path = WORK / f"tree-{sha[:12]}"
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha],
            check=True, capture_output=True,
        )
    return path


async def block(address: str, sessions: list[str], rt: Runtime) -> tuple[float, float]:
    """Turns on `sessions`; (runtime CPU ms per turn, median wall ms)."""
    meter = turn.CpuMeter([rt.runtime])
    async with PilothouseClient(address) as client:
        meter.start()
        walls = [await turn.pilothouse_turn(client, s) * 1000 for s in sessions]
    cpu = meter.stop(len(sessions))[rt.runtime.name]
    return cpu, statistics.median(walls)


async def prepare(address: str, count: int) -> list[str]:
    async with PilothouseClient(address) as client:
        sessions = await turn.create_sessions(client, w.AGENT_TURN, count)
        for session_id in sessions[:5]:  # warm-up
            await turn.pilothouse_turn(client, session_id)
    return sessions[5:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="A is this git ref's tree (default: this tree)")
    parser.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--blocks", type=int, default=8, help="blocks per side")
    parser.add_argument("--turns", type=int, default=40, help="turns per block")
    args = parser.parse_args()

    deps = envs.ensure_deps()
    loop = "uvloop" if deps.ok else "asyncio"
    WORK.mkdir(parents=True, exist_ok=True)
    paths = Paths(WORK, envs.DEPS if deps.ok else None)
    sides: dict[str, dict[str, str]] = {"A": settings(args.env_a), "B": settings(args.env_b)}
    shown = {name: dict(extra) for name, extra in sides.items()}
    tree = None
    if args.ref:
        # The runtime's settings replace its PYTHONPATH: the tree first, then the bench's.
        inherited = bench_env(paths.deps)["PYTHONPATH"]
        tree = worktree(args.ref)
        sides["A"]["PYTHONPATH"] = os.pathsep.join([str(tree / "server"), inherited])
    model = start_model_server(paths, loop, 0.0)
    runtimes: dict[str, Runtime] = {}
    try:
        for name, extra in sides.items():
            store = "memory://" if args.store == "memory" else f"sqlite:///{WORK}/{name}.db"
            (WORK / f"{name}.db").unlink(missing_ok=True)
            rt = start_runtime(paths, model, loop, store, f"ab-{name}", **extra)
            runtimes[name] = rt
        sessions = {
            name: asyncio.run(prepare(rt.address, args.blocks * args.turns + 5))
            for name, rt in runtimes.items()
        }
        cpu: dict[str, list[float]] = {"A": [], "B": []}
        wall: dict[str, list[float]] = {"A": [], "B": []}
        order = ["A", "B", "B", "A"]
        for i in range(args.blocks * 2):
            name = order[i % 4]
            n = len(cpu[name])
            chunk = sessions[name][n * args.turns:(n + 1) * args.turns]
            c, m = asyncio.run(block(runtimes[name].address, chunk, runtimes[name]))
            cpu[name].append(c)
            wall[name].append(m)
            print(f"[ab] block {i + 1:2}: {name} {c:6.2f} ms CPU/turn, {m:6.2f} ms wall", flush=True)
    finally:
        for rt in runtimes.values():
            rt.stop()
        model.stop()
        if tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
    ratios = [b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    print()
    print(f"A: {args.ref or 'this tree'} {shown['A'] or ''}".rstrip())
    print(f"B: this tree {shown['B'] or ''}".rstrip())
    print("| side | runtime CPU ms/turn (median of blocks) | min-max | wall ms (median) |")
    print("|---|---:|---:|---:|")
    for name in ("A", "B"):
        print(f"| {name} | {statistics.median(cpu[name]):.2f} | "
              f"{min(cpu[name]):.2f}-{max(cpu[name]):.2f} | {statistics.median(wall[name]):.2f} |")
    print(f"\nB/A CPU per turn, median of {len(ratios)} paired blocks: "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
