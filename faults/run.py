"""`make faults`: the fault suite. Starts real processes on 127.0.0.1 (the
runtime, ToolExecutors, a fault-injecting model server, PostgreSQL where a
case needs it), provokes faults category by category and prints a table:
cases tried, clear statuses, unclear statuses, crashes or hangs, stored
messages lost and invalid histories. The table also goes to
`faults/results/latest.md` (and `latest.json`, every case with its detail).

    .venv/bin/python faults/run.py            # everything (see README, Reliability)
    .venv/bin/python faults/run.py --quick    # a few cases per category (CI)
    .venv/bin/python faults/run.py --only input model

Exits 1 when a case found an unclear status, a crash or hang, a lost
message or an invalid history, unless the case names a defect listed in
`report.KNOWN_OPEN` (shown as "known"); 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from report import CRASH, Category, Report

FAULTS = Path(__file__).resolve().parent
#: Category key → (module, title), in the order they run.
CATEGORIES = {
    "input": ("cat_input", "bad input (both servers)"),
    "model": ("cat_model", "model faults"),
    "tools": ("cat_tools", "ToolExecutor faults"),
    "process": ("cat_process", "process faults"),
    "load": ("cat_load", "load and soak"),
}


def _environment() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "-C", str(FAULTS.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    return {"CPUs": str(os.cpu_count()), "Python": platform.python_version(), "commit": commit or "?"}


async def _run_category(key: str, work: Path, quick: bool) -> Category:
    module_name, title = CATEGORIES[key]
    category = Category(title)
    print(f"[faults] {title} ...", flush=True)
    try:
        module = importlib.import_module(module_name)
        await module.run(category, work / key, quick)
    except Exception as exc:  # the suite itself failed: a crash of the category
        traceback.print_exc()
        category.add("the category ran to its end", CRASH, f"{type(exc).__name__}: {exc}"[:300])
    category.finish()
    row = category.row()
    print(f"[faults] {title}: {row}", flush=True)
    return category


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(args.work or tempfile.mkdtemp(prefix="pilothouse-faults-"))
    categories = [await _run_category(key, work, args.quick) for key in args.only or CATEGORIES]
    report = Report(categories, args.quick, started_at, time.monotonic() - started, _environment())
    print()
    print(report.table())
    if args.write:
        report.write(FAULTS / "results" if args.results is None else Path(args.results))
    for category, case in report.failures:
        print(f"FAILED {category}: {case.name}: {case.verdict} {case.detail}")
    for category, case in report.fixed_known:
        print(f"PASSES NOW (remove #{case.known} from KNOWN_OPEN?) {category}: {case.name}")
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"[faults] logs in {work}")
    return 1 if report.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases per category")
    parser.add_argument("--only", nargs="+", choices=list(CATEGORIES), help="run these categories")
    parser.add_argument("--work", help="directory for logs and stores (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--results", help="where latest.md/.json go (default faults/results)")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="print the table only")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
