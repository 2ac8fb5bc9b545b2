"""The node's intra-op thread count (``torch.set_num_threads``), chosen so that co-located nodes
do not fight over the same cores.

Torch's default is one thread per CPU of the affinity mask, whatever else runs there. Three
nodes started by hand on a 2-CPU machine then run 6 OpenMP threads on 2 cores, and every tiny
operator of a small model waits at a barrier for a thread that is not scheduled: rounds measured
7.3 s instead of 0.14 s with one thread each (docs/benchmarks.md, "Co-located nodes").

The choice, logged: ``--threads`` (``threads`` in TOML) if given; else ``OMP_NUM_THREADS`` if set
(what ``fedhive simulate`` and the compose file give their nodes); else the CPUs this process may
use (affinity mask and cgroup quota: :mod:`fedhive.common.runtime.cpus`) divided by the number of
``fedhive client`` processes on this machine. That last choice is made again before every task,
so a node started first gives cores back when others join.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from fedhive.common.runtime.cpus import UsableCpus, usable_cpus

log = logging.getLogger("fedhive.client")

PROC = Path("/proc")
ENV = "OMP_NUM_THREADS"


def is_node_command(argv: list[str]) -> bool:
    """``fedhive client ...`` or ``python -m fedhive.common.cli client ...`` (or the client
    module itself)."""
    for i, arg in enumerate(argv):
        if arg == "fedhive.client.cli":
            return True
        launcher = Path(arg).name == "fedhive" or arg == "fedhive.common.cli"
        if launcher and i + 1 < len(argv) and argv[i + 1] == "client":
            return True
    return False


def colocated_nodes(proc: Path = PROC) -> int:
    """Node processes visible on this machine (this one included; at least 1)."""
    count = 0
    try:
        entries = list(proc.iterdir())
    except OSError:
        return 1
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        count += is_node_command(argv)
    return max(1, count)


def fixed_threads(requested: int | None, env: Mapping[str, str]) -> tuple[int, str] | None:
    """The count the user chose (``--threads``, else ``OMP_NUM_THREADS``), if any."""
    if requested is not None:
        return requested, "--threads"
    raw = env.get(ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw), ENV
    return None


def choose_threads(
    requested: int | None, env: Mapping[str, str], cpus: UsableCpus, nodes: int
) -> tuple[int, str]:
    """(threads, why): the user's choice, else the usable CPUs shared among the nodes."""
    fixed = fixed_threads(requested, env)
    if fixed is not None:
        return fixed
    share = max(1, cpus.count // max(1, nodes))
    why = f"{cpus.describe()}, {nodes} fedhive node(s) on this machine; --threads to choose"
    return share, why


class ThreadChoice:
    """Applies :func:`choose_threads`; :meth:`apply` again before each task (the automatic
    choice follows the nodes that come and go)."""

    def __init__(self, requested: int | None, env: Mapping[str, str] | None = None) -> None:
        self.requested = requested
        self.env = dict(os.environ if env is None else env)
        self.current: int | None = None

    def apply(self) -> int:
        if self.current is not None and fixed_threads(self.requested, self.env) is not None:
            return self.current
        import torch

        threads, why = choose_threads(self.requested, self.env, usable_cpus(), colocated_nodes())
        if threads != self.current:
            torch.set_num_threads(threads)
            log.info("torch intra-op threads: %d (%s)", threads, why)
            self.current = threads
        return threads
