"""FedAvg on non-IID digits (8 nodes, Dirichlet alpha=0.3) versus the same CNN trained centrally.

FedAvg: ``fedhive simulate`` (a real coordinator and 8 node processes over loopback gRPC), each
round ``--epochs`` local epochs per node. Central: the same model, the same initial weights and
optimiser settings, trained on the union of the nodes' training shares (their local validation
splits excluded, as on the nodes) for ``--epochs`` epochs per "round": the same number of
examples processed (comparable compute). Both are scored on the coordinator's held-out 20%.

Prints one JSON line and writes the curves to ``--png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fedhive.common.api.task import TaskContext
from fedhive.common.tasks.digits import DigitsTask
from fedhive.common.tasks.training import Trainer


def central_curve(
    data_root: Path, nodes: int, rounds: int, epochs: int, lr: float, seed: int
) -> list[float]:
    parts = [
        DigitsTask(TaskContext(role="node", data_dir=data_root / f"node-{i}", seed=seed + i))
        for i in range(nodes)
    ]
    xs = torch.cat([p.train[0] for p in parts if p.train is not None])
    ys = torch.cat([p.train[1] for p in parts if p.train is not None])
    server = DigitsTask(TaskContext(role="server", data_dir=data_root / "server", seed=seed))
    assert server.val is not None
    model = server.build_model()  # the coordinator's initial model: same seed, same weights
    trainer = Trainer("cpu")
    curve = []
    for r in range(1, rounds + 1):
        cfg = server.config({"epochs": epochs, "lr": lr, "round": r})
        trainer.fit(model, [xs, ys], cfg, seed=seed)
        curve.append(trainer.evaluate(model, server.val)["accuracy"])
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.02, help="SGD (momentum 0.9), both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("runs/digits-fedavg-vs-central"))
    p.add_argument("--png", type=Path, default=Path("docs/figures/digits_fedavg_vs_central.png"))
    ns = p.parse_args(argv)
    from fedhive.server.simulate import main as simulate

    code = simulate(
        [
            "--nodes",
            str(ns.nodes),
            "--alpha",
            str(ns.alpha),
            "--rounds",
            str(ns.rounds),
            "--seed",
            str(ns.seed),
            "--train",
            f"epochs={ns.epochs}",
            "--train",
            f"lr={ns.lr}",
            "--workdir",
            str(ns.workdir),
            "--no-progress",
            "--log-level",
            "WARNING",
        ]
    )
    if code:
        return code
    events = [json.loads(x) for x in (ns.workdir / "run" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e.get("event") == "round" and e.get("committed")]
    fed = [float(e["server_evaluate"]["accuracy"]) for e in rounds]
    secs = [float(e["duration_s"]) for e in rounds]
    central = central_curve(ns.workdir / "data", ns.nodes, ns.rounds, ns.epochs, ns.lr, ns.seed)
    target = central[-1] - 0.02
    within = next((i + 1 for i, acc in enumerate(fed) if acc >= target), None)
    result = {
        "nodes": ns.nodes,
        "alpha": ns.alpha,
        "rounds": ns.rounds,
        "local_epochs": ns.epochs,
        "lr": ns.lr,
        "central_final_acc": round(central[-1], 4),
        "central_best_acc": round(max(central), 4),
        "fedavg_final_acc": round(fed[-1], 4),
        "fedavg_best_acc": round(max(fed), 4),
        "round_within_2_points": within,
        "mean_round_s": round(sum(secs) / len(secs), 3),
        "fedavg_curve": [round(a, 4) for a in fed],
        "central_curve": [round(a, 4) for a in central],
    }
    print(json.dumps(result))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(1, ns.rounds + 1)
    ax.plot(xs, fed, marker="o", ms=3, label=f"FedAvg, {ns.nodes} nodes, Dirichlet a={ns.alpha}")
    ax.plot(xs, central, marker="s", ms=3, label="central (same model, same examples seen)")
    ax.axhline(target, color="grey", ls="--", lw=0.8, label="central final - 2 points")
    if within:
        ax.axvline(within, color="C0", ls=":", lw=0.8)
    ax.set_xlabel(f"round ({ns.epochs} local epochs each) / central epochs / {ns.epochs}")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("digits CNN: FedAvg on non-IID nodes vs central training")
    fig.tight_layout()
    ns.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ns.png, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
