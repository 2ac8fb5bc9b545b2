"""Training overhead of the runtime: the task's ``fit`` (config validation, the shared Trainer,
metrics) versus the same plain PyTorch loop (same model, data, batch order, optimiser).

Both run in the same process, interleaved (alternating which goes first), ``--repeats`` times each;
the figure is the ratio of the fastest runs (the least disturbed by other load on a shared
machine). Prints one JSON line per workload. Usage::

    python benchmarks/training_overhead.py [--repeats 25] [--epochs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedhive.common.api.task import TaskContext
from fedhive.common.data.partition import write_npz
from fedhive.common.tasks.digits import DigitsTask, load_digits_arrays
from fedhive.common.tasks.images import ImageTask


def plain_loop(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: str,
) -> None:
    """What a user would write by hand: the same batches, no metrics."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed * 1_000_003)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()


def measure(name: str, task: DigitsTask | ImageTask, config: dict, repeats: int) -> dict:
    assert task.train is not None
    x, y = task.train
    cfg = task.config(config)
    runtime_s, plain_s = [], []

    def run_runtime() -> None:
        model = task.build_model()
        t0 = time.perf_counter()
        task.fit(model, config)
        runtime_s.append(time.perf_counter() - t0)

    def run_plain() -> None:
        model = task.build_model()
        t0 = time.perf_counter()
        plain_loop(model, x, y, cfg.epochs, cfg.batch_size, cfg.lr, task.ctx.seed, cfg.optimizer)
        plain_s.append(time.perf_counter() - t0)

    for i in range(repeats):
        for run in (run_runtime, run_plain) if i % 2 == 0 else (run_plain, run_runtime):
            run()
    rt, pl = min(runtime_s), min(plain_s)
    steps = cfg.epochs * -(-len(y) // cfg.batch_size)
    return {
        "workload": name,
        "examples": len(y),
        "steps": steps,
        "runtime_s": round(rt, 4),
        "plain_s": round(pl, 4),
        "overhead_pct": round(100 * (rt / pl - 1), 2),
        "runtime_ms_per_step": round(1000 * rt / steps, 3),
        "plain_ms_per_step": round(1000 * pl / steps, 3),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ns = p.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    x, y = load_digits_arrays()
    with tempfile.TemporaryDirectory() as tmp:
        write_npz(Path(tmp) / "train.npz", x, y)
        digits = DigitsTask(TaskContext(role="node", data_dir=Path(tmp), args={"val_fraction": 0}))
        print(json.dumps(measure("digits-cnn b16", digits, {"epochs": ns.epochs}, ns.repeats)))
        rgb = np.repeat((x[:, :, :, None] * 255).astype(np.uint8), 3, axis=3)
        write_npz(Path(tmp) / "train.npz", rgb, y)
        args = {"image_size": 32, "channels": 3, "width": 16, "depth": 2, "val_fraction": 0}
        cnn = ImageTask(TaskContext(role="node", data_dir=Path(tmp), args=args))
        config = {"epochs": 1, "batch_size": 64}
        print(json.dumps(measure("compact-cnn 3x32x32 b64", cnn, config, ns.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
