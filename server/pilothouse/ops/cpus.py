"""How many CPUs this process may use: its CPU affinity, capped by its
cgroup's CPU quota (a Kubernetes CPU limit), not the host's count.

A pod limited to 2 CPUs on a 64-core node has 64 CPUs in its affinity and
`os.cpu_count()`, but a quota of 2 CPUs' worth of time per period; starting
64 workers there would only make them wait for each other.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may use, at least 1: the size of its affinity
    mask (`sched_getaffinity`), capped by the smallest CPU quota of its
    cgroup and the cgroup's ancestors, rounded up (cgroup v2 `cpu.max`, or
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (quota / period; the
    smallest along the path to the root), or None when there is none or it
    cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            quotas += _quotas_along(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            base = cgroup_root / controllers if (cgroup_root / controllers).is_dir() else cgroup_root / "cpu"
            quotas += _quotas_along(base, path, _v1_quota)
    return min(quotas) if quotas else None


def _quotas_along(base: Path, path: str, read) -> list[float]:
    """The quotas `read` finds in `base/path` and each of its ancestors up
    to `base` (a container often sees its own cgroup as "/")."""
    found: list[float] = []
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        quota = read(base.joinpath(*parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period
