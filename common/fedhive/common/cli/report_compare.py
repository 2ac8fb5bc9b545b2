"""``fedhive report RUN_DIR RUN_DIR ...``: several runs side by side (e.g. one per strategy).

Each run is labelled by its directory's name and its aggregation rule (from ``config.json``).
Writes a markdown table (per run: best and final held-out accuracy, the round it first came
within 2 points of its best, seconds per round, the epsilon spent per DP level) and, with
matplotlib, one plot of held-out accuracy (the coordinator's evaluation, else the federated one)
and training loss per round, and of epsilon per round when a run recorded it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedhive.common.cli.report import RunSummary, load_run, plot_epsilon

NEAR_BEST = 0.02


@dataclass
class Compared:
    label: str
    summary: RunSummary

    def accuracy(self) -> list[tuple[int, float]]:
        series = self.summary.series("accuracy")
        return sorted(series.get("server eval") or series.get("federated eval") or [])


def label_of(run_dir: Path) -> str:
    config = run_dir / "config.json"
    strategy = ""
    if config.is_file():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            settings = {}
        if isinstance(settings, dict):
            strategy = str(settings.get("strategy", "fedavg"))
            args = settings.get("strategy_args") or {}
            if args:
                strategy += "(" + ", ".join(f"{k}={v}" for k, v in sorted(args.items())) + ")"
    name = run_dir.resolve().name
    if name == "run":  # `fedhive simulate --workdir W` keeps its run in W/run: W names it
        name = run_dir.resolve().parent.name
    if not strategy or strategy == name:
        return name
    return strategy if strategy.split("(")[0] == name else f"{name}: {strategy}"


def load_runs(run_dirs: Sequence[Path]) -> list[Compared]:
    return [Compared(label_of(Path(d)), load_run(Path(d))) for d in run_dirs]


def markdown(runs: Sequence[Compared]) -> str:
    lines = ["# Runs side by side", ""]
    lines.append(
        "| run | rounds | best accuracy (round) | final accuracy | within 2 points of best "
        "from round | s/round | epsilon |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        points = run.accuracy()
        rounds = run.summary.rounds
        seconds = sum(r.duration_s for r in rounds) / len(rounds) if rounds else None
        if points:
            best_r, best = max(points, key=lambda p: (p[1], -p[0]))
            near = next(r for r, a in points if a >= best - NEAR_BEST)
            cells = [f"{best:.4f} ({best_r})", f"{points[-1][1]:.4f}", str(near)]
        else:
            cells = ["-", "-", "-"]
        s = "-" if seconds is None else f"{seconds:.2f}"
        eps = run.summary.epsilon_series()
        spent = ", ".join(f"{level} {points[-1][1]:.3f}" for level, points in eps.items()) or "-"
        lines.append(f"| {run.label} | {len(rounds)} | {' | '.join(cells)} | {s} | {spent} |")
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Compared], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    private = any(run.summary.epsilon_series() for run in runs)
    fig, axes = plt.subplots(1, 3 if private else 2, figsize=(16 if private else 11, 4))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        points = run.accuracy()
        if points:
            xs, ys = zip(*points, strict=True)
            axes[1].plot(xs, ys, marker="o", ms=3, color=color, label=run.label)
        loss = sorted(run.summary.series("loss").get("train") or [])
        if loss:
            xs, ys = zip(*loss, strict=True)
            axes[0].plot(xs, ys, marker="o", ms=3, color=color, label=run.label)
    axes[0].set_ylabel("training loss (log scale)")
    axes[0].set_yscale("log")  # a diverging run would flatten the others
    axes[1].set_ylabel("held-out accuracy")
    if private:
        plot_epsilon(
            axes[2],
            {
                f"{run.label}: {level}": points
                for run in runs
                for level, points in run.summary.epsilon_series().items()
            },
        )
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title or "runs side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
