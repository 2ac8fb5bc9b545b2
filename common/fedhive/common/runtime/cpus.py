"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` counts the machine's CPUs; a process pinned with ``taskset``/cpusets, or in a
container with ``--cpus 2`` (a CFS quota), may use fewer. Torch's default thread count honours the
affinity mask but not the quota.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class UsableCpus:
    count: int  # min(affinity, ceil(quota)), at least 1
    affinity: int
    quota: float | None  # CPUs the cgroup grants (None: no limit)

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g}"
        return f"{self.count} usable CPU(s): affinity {self.affinity}, {quota}"


def affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(text: str | None) -> float | None:
    """``cpu.max``: "QUOTA PERIOD" or "max PERIOD"."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
        period = int(_read(folder / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``), in CPUs; None when there is none."""
    quotas: list[float] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        rel = Path(path.lstrip("/")) if path else Path()
        if controllers == "":  # v2 unified hierarchy
            bases, name = [root], "cpu.max"
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu,cpuacct", root / "cpu"]
            name = ""
        else:
            continue
        for base in bases:
            folder = base / rel
            while True:
                q = _v2_quota(_read(folder / name)) if name else _v1_quota(folder)
                if q is not None:
                    quotas.append(q)
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
    return min(quotas) if quotas else None


def usable_cpus() -> UsableCpus:
    affinity = affinity_cpus()
    quota = cgroup_cpu_quota()
    count = affinity if quota is None else max(1, min(affinity, math.ceil(quota)))
    return UsableCpus(count, affinity, quota)
