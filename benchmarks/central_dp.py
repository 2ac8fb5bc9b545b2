"""Central DP's cost on the coordinator: seconds to fold N updates and finalize, FedAvg alone vs
FedAvg under central DP (clip each delta: two passes over the update and the global model; noise
from the AES-256-CTR source at the end), and the noise source's throughput.

Usage::

    python benchmarks/central_dp.py                  # P = 1M and 4M float32 values, N = 8

Prints one JSON line per (P, rule), the best of 3 repetitions.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import numpy as np

from fedhive.common.privacy.central import CentralDPSettings
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.privacy.central import CentralDP
from fedhive.server.privacy.noise import GaussianNoise
from fedhive.server.strategy.base import Aggregator
from fedhive.server.strategy.fedavg import FedAvg

PIECE = 1 << 20  # bytes per piece, as a staged update hands them out


class Update:
    def __init__(self, array: np.ndarray) -> None:
        self.raw, self.num_examples = array.tobytes(), 100

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        view = memoryview(self.raw)
        for lo in range(0, len(view), PIECE):
            yield view[lo : lo + PIECE]


def one_round(
    rule: Aggregator, specs: list[TensorSpec], current: list[np.ndarray], updates: list[Update]
) -> float:
    started = time.perf_counter()
    rule.begin(specs, current)
    if isinstance(rule, CentralDP):
        rule.expect(len(updates))
    for u in updates:
        rule.fold(u)
    rule.finalize()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--nodes", type=int, default=8)
    ns = p.parse_args()
    rng = np.random.default_rng(0)
    settings = CentralDPSettings(noise_multiplier=1.0, clip=1.0)
    for n_params in ns.params:
        specs = [TensorSpec("w", "float32", (n_params,))]
        current = [rng.standard_normal(n_params, dtype=np.float32)]
        updates = [
            Update(current[0] + 0.01 * rng.standard_normal(n_params, dtype=np.float32))
            for _ in range(ns.nodes)
        ]
        for name, make in (
            ("fedavg", FedAvg),
            ("central_dp(fedavg)", lambda: CentralDP(FedAvg(), settings)),
        ):
            best = min(one_round(make(), specs, current, updates) for _ in range(3))
            print(
                json.dumps(
                    {"params": n_params, "nodes": ns.nodes, "rule": name, "seconds": round(best, 3)}
                )
            )
        noise = GaussianNoise()
        started = time.perf_counter()
        noise.standard_normal(n_params)
        rate = n_params / (time.perf_counter() - started)
        print(json.dumps({"params": n_params, "noise_values_per_s": round(rate)}))


if __name__ == "__main__":
    main()
