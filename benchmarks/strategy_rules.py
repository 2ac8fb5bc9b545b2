"""The aggregation rules alone: seconds and peak memory to fold N updates of P float32 values and
finalize, each rule in a fresh process, side by side in one run.

Each update is generated piece by piece (1 MiB at a time, seeded) as it is folded, so the process
never holds N models unless the rule does; peak memory is the process's high-water mark
(``VmHWM``) above what it held just before the round began (the global model included), reported
in bytes and in models (P x 4 bytes). Robust rules keep their updates on disk in a temporary
folder (``--dir``, default the system's).

Usage::

    python benchmarks/strategy_rules.py --params 10000000 --nodes 8 16
    python benchmarks/strategy_rules.py --rules fedavg fedmedian --params 1000000 --nodes 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PIECE = 2**20
RULES = {
    "fedavg": {},
    "fedadam": {"eta": 0.01},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.2},
    "multikrum": {"f": 2, "m": 4},
    "krum": {"f": 2},
    "bulyan": {"f": 1},
}


def hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_hwm() -> None:
    """Reset the high-water mark to the current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


class Generated:
    """An update of ``params`` float32 values, made 1 MiB at a time from its seed."""

    def __init__(self, params: int, seed: int, num_examples: int) -> None:
        self.params, self.seed, self.num_examples = params, seed, num_examples

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        import numpy as np

        rng = np.random.default_rng(self.seed)
        step = PIECE // 4
        for start in range(0, self.params, step):
            n = min(step, self.params - start)
            yield memoryview(rng.standard_normal(n, dtype=np.float32).tobytes())


def one(rule: str, params: int, nodes: int, folder: str | None) -> dict[str, object]:
    import numpy as np

    from fedhive.common.wire.tensors import TensorSpec
    from fedhive.server.strategy.registry import build_strategy

    specs = [TensorSpec("w", "float32", (params,))]
    agg = build_strategy(rule, RULES[rule], Path(folder) if folder else None)
    global_raw = [np.zeros(params, dtype=np.float32)]
    reset_hwm()
    base = hwm_bytes()
    started = time.perf_counter()
    agg.begin(specs, global_raw)
    for i in range(nodes):
        agg.fold(Generated(params, seed=i, num_examples=100 + i))
    folded = time.perf_counter()
    out = agg.finalize()
    done = time.perf_counter()
    assert out[0].shape == (params,)
    peak = hwm_bytes() - base
    return {
        "rule": rule,
        "params": params,
        "nodes": nodes,
        "fold_s": round(folded - started, 3),
        "finalize_s": round(done - folded, 3),
        "total_s": round(done - started, 3),
        "peak_above_start_bytes": peak,
        "peak_above_start_models": round(peak / (4 * params), 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=10_000_000)
    p.add_argument("--nodes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--dir", help="where robust rules keep updates (default: a temporary folder)")
    p.add_argument("--one", nargs=3, metavar=("RULE", "PARAMS", "NODES"), help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.one:
        rule, params, nodes = ns.one
        print(json.dumps(one(rule, int(params), int(nodes), ns.dir)))
        return 0
    for nodes in ns.nodes:
        for rule in ns.rules:
            cmd = [sys.executable, __file__, "--one", rule, str(ns.params), str(nodes)]
            if ns.dir:
                cmd += ["--dir", ns.dir]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            print(proc.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
