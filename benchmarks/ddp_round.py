"""Seconds per round over real gRPC: distributed DP + SecAgg+ vs SecAgg+ alone, in one run.

    nice python benchmarks/ddp_round.py --nodes 4 --params 1000000 --rounds 4 --task-arg train_s=2

Both modes run :func:`secagg_round.run_mode` (one coordinator process, ``--nodes`` node processes
of the constant task), the second with ``[dp.distributed]`` added to the coordinator's config.
Seconds per round: the median ``duration_s`` of the committed rounds after the first. With
distributed DP a node draws its discrete Gaussian noise from the task's arrival on (while it
downloads, exchanges keys and trains; ``train_s``: the stand-in for training) and adds it to its
mask, then clips its delta and quantizes it into the mask.
Also measures the exact sampler alone (``--sampler`` samples, seconds and samples per second).
Prints JSON lines and a Markdown table row. Figures, not a test: expect noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from secagg_round import run_mode  # same folder: run as a script

from fedhive.common.privacy.discrete_gaussian import SecureBits, discrete_gaussian
from fedhive.common.privacy.distributed import DistributedDPSettings, plan


def sampler(n: int, nodes: int, settings: DistributedDPSettings, repeats: int = 3) -> dict:
    """Seconds to draw one node's noise for ``n`` coordinates (median of ``repeats``)."""
    variance = plan(settings, nodes, n).node_variance
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        discrete_gaussian(SecureBits(), n, variance)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    s, c = statistics.median(walls), statistics.median(cpus)
    return {
        "samples": n,
        "variance": variance,
        "s": round(s, 3),
        "cpu_s": round(c, 3),
        "per_cpu_s": round(n / c),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--tensors", type=int, default=8)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--sampler", type=int, action="append", default=[], metavar="N")
    p.add_argument("--task-arg", dest="task_args", action="append", default=[])
    ns = p.parse_args()
    settings = DistributedDPSettings(noise_multiplier=ns.noise_multiplier, clip=ns.clip)
    for n in ns.sampler:
        print(json.dumps({"sampler": sampler(n, ns.nodes, settings)}))
    dp = (
        "[dp]",
        "delta = 1e-5",
        "[dp.distributed]",
        f"noise_multiplier = {ns.noise_multiplier}",
        f"clip = {ns.clip}",
    )
    common = (True, ns.nodes, ns.params, ns.rounds, ns.tensors)
    kw = {"extra_task_args": tuple(ns.task_args)}
    results = [run_mode(*common, **kw), run_mode(*common, settings=dp, **kw)]  # type: ignore[arg-type]
    results[1]["mode"] = "dp.distributed + secagg+"
    for r in results:
        print(json.dumps(r))
    alone, ddp = results
    ratio = ddp["s_per_round"] / alone["s_per_round"]
    print("| N | P | task args | SecAgg+ s/round | DDP + SecAgg+ s/round | ratio |")
    print(
        f"| {ns.nodes} | {ns.params:,} | {' '.join(ns.task_args) or '-'} | "
        f"{alone['s_per_round']} | {ddp['s_per_round']} | {ratio:.2f} |"
    )
    ok = all(r["committed"] == ns.rounds and r["coord_exit"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
