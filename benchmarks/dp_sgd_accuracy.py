"""DP-SGD at each site on digits: held-out accuracy against the run's epsilon, next to non-private.

Each point is one ``fedhive simulate`` run (a real coordinator and ``--nodes`` node processes over
loopback gRPC, IID split, all of each node's share for training): ``[dp.sgd] target_epsilon = E``
for each budget E (delta 1e-5; every node calibrates its noise to reach E after the run's
rounds), ``--repeats`` runs each, and the same run without DP. The CNN is the digits task at
width 4 (9k weights: the noise's total norm grows with the number of weights). The DP runs use
a larger learning rate than the non-private one where the noise allows (clipped gradients are
short); the non-private run is also shown at that learning rate. Accuracy is the coordinator's
held-out 20% after the last round; epsilon is the largest a node reported (the round record's
``privacy["sgd"]["max"]``). DP noise comes from the OS's entropy: runs differ from one to the next.

Prints one JSON line per run and writes the curves to ``--png``. Usage (minutes)::

    nice -n 10 python benchmarks/dp_sgd_accuracy.py [--budgets 1,3,8] [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def simulate_run(ns: argparse.Namespace, name: str, lr: float, epsilon: float | None) -> dict:
    from fedhive.server.simulate import main as simulate

    workdir = ns.workdir / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    args = [
        "--nodes", str(ns.nodes), "--iid", "--rounds", str(ns.rounds), "--seed", str(ns.seed),
        "--train", f"batch_size={ns.batch_size}", "--train", f"epochs={ns.epochs}",
        "--train", f"lr={lr}", "--workdir", str(workdir), "--insecure", "--no-progress",
        "--log-level", "WARNING", "--task-arg", f"width={ns.width}", "--task-arg", "val_fraction=0",
    ]  # fmt: skip
    if epsilon is not None:
        config = workdir / "dp.toml"
        config.write_text(
            f"[dp]\ndelta = {ns.delta}\n[dp.sgd]\ntarget_epsilon = {epsilon}\n"
            f"max_grad_norm = {ns.clip}\n"
        )
        args += ["--config", str(config)]
    started = time.monotonic()
    with open(workdir.parent / f"{name}.log", "w") as out, contextlib.redirect_stdout(out):
        code = simulate(args)
    if code:
        raise SystemExit(f"simulate failed for {name} (exit {code})")
    lines = (workdir / "run" / "events.jsonl").read_text().splitlines()
    rounds = [e for e in map(json.loads, lines) if e.get("event") == "round" and e["committed"]]
    curve = [float(e["server_evaluate"]["accuracy"]) for e in rounds]
    eps = [float(e["privacy"]["sgd"]["max"]) if "privacy" in e else 0.0 for e in rounds]
    return {
        "run": name,
        "target_epsilon": epsilon,
        "delta": ns.delta if epsilon is not None else None,
        "lr": lr,
        "final_acc": round(curve[-1], 4),
        "epsilon": round(eps[-1], 3),
        "curve": [round(a, 4) for a in curve],
        "epsilon_curve": [round(x, 3) for x in eps],
        "wall_s": round(time.monotonic() - started, 1),
    }


def plot(results: list[dict[str, Any]], ns: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = (
            f"DP-SGD, epsilon {r['epsilon']:.2f} (target {r['target_epsilon']:g})"
            if r["target_epsilon"] is not None
            else f"non-private, lr {r['lr']:g}"
        )
        left.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", ms=3, label=label)
    left.set_xlabel(f"round ({ns.nodes} nodes, {ns.epochs} local epoch(s), batch {ns.batch_size})")
    left.set_ylabel("held-out accuracy")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    left.set_title("accuracy per round")
    private = [r for r in results if r["target_epsilon"] is not None]
    best = max(r["final_acc"] for r in results if r["target_epsilon"] is None)
    xs, ys = [r["epsilon"] for r in private], [r["final_acc"] for r in private]
    right.plot(xs, ys, "o", label="DP run")
    targets = sorted({r["target_epsilon"] for r in private})
    means = [
        sum(r["final_acc"] for r in private if r["target_epsilon"] == t)
        / sum(1 for r in private if r["target_epsilon"] == t)
        for t in targets
    ]
    right.plot(targets, means, "-", color="C0", label="DP, mean of runs")
    right.axhline(best, color="grey", ls="--", label=f"non-private ({best:.3f})")
    right.axhline(best - 0.10, color="grey", ls=":", label="non-private - 10 points")
    right.set_xscale("log")
    right.set_xlabel(f"epsilon at delta {ns.delta:g} (largest over the nodes)")
    right.set_ylabel("final held-out accuracy")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    right.set_title("accuracy against epsilon")
    fig.suptitle("digits CNN, DP-SGD at each site (Opacus, Poisson sampling)")
    fig.tight_layout()
    ns.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ns.png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="expected (Poisson) batch size")
    p.add_argument("--lr", type=float, default=0.1, help="non-private SGD (momentum 0.9)")
    p.add_argument(
        "--dp-lr",
        default="1=0.1,3=0.5,8=0.5",
        help="DP-SGD learning rate per budget (momentum 0.9); the last one for the non-private "
        "run at the DP learning rate",
    )
    p.add_argument(
        "--width",
        type=int,
        default=4,
        help="the digits CNN's width (fewer weights: less noise in total)",
    )
    p.add_argument("--repeats", type=int, default=2, help="DP runs per budget")
    p.add_argument("--clip", type=float, default=1.0, help="max_grad_norm")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--budgets", default="1,3,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("runs/dp-sgd-accuracy"))
    p.add_argument("--png", type=Path, default=Path("docs/figures/dp_sgd_accuracy.png"))
    ns = p.parse_args(argv)
    lrs = {float(k): float(v) for k, v in (x.split("=") for x in ns.dp_lr.split(","))}
    results = [simulate_run(ns, "plain", ns.lr, None)]
    results.append(simulate_run(ns, "plain-dp-lr", lrs[max(lrs)], None))
    for r in results:
        print(json.dumps(r), flush=True)
    for budget in (float(b) for b in ns.budgets.split(",")):
        for i in range(ns.repeats):
            results.append(simulate_run(ns, f"eps-{budget:g}-{i}", lrs[budget], budget))
            print(json.dumps(results[-1]), flush=True)
    plot(results, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
