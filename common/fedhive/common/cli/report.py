"""``fedhive report RUN_DIR``: curves and a summary of a run, from ``RUN_DIR/events.jsonl``.

Writes ``RUN_DIR/report.png`` (loss and accuracy per round: training, federated evaluation,
coordinator-side evaluation, and each node's thin line where the run recorded them; with
differential privacy, epsilon per round for each level the records hold) and
``RUN_DIR/report.md`` (best round, final metrics, bytes moved, time), and prints the markdown.
``--tensorboard`` also writes TensorBoard event files to ``RUN_DIR/tensorboard``.
Several run directories are compared side by side instead (``fedhive.common.cli.report_compare``).
The plot needs matplotlib (``pip install 'fedhive[report]'``); without it, only the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhive.common.cli.helptext import plain
from fedhive.common.privacy.epsilon import epsilons
from fedhive.common.record import EVALUATE, ROUND, RoundRecord

Series = dict[str, list[tuple[int, float]]]


@dataclass
class RunSummary:
    run_id: str = ""
    model_bytes: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)  # the committed training rounds
    final_eval: RoundRecord | None = None  # the final federated evaluation
    started: float | None = None
    ended: float | None = None
    status: str = "running or interrupted"

    def series(self, metric: str) -> Series:
        """Named (round, value) series of ``metric``."""
        out: Series = {}

        def add(name: str, x: int, metrics: Mapping[str, Any] | None) -> None:
            if metrics and isinstance(metrics.get(metric), int | float):
                out.setdefault(name, []).append((x, float(metrics[metric])))

        for rec in self.rounds:
            r = rec.round
            add("train", r, rec.train)
            if rec.evaluate:
                add("federated eval", int(rec.evaluate.get("model_round", r - 1)), rec.evaluate)
            add("server eval", r, rec.server_evaluate)
            for node, per_node in sorted((rec.nodes or {}).items()):
                add(f"{node} train", r, per_node.get("train"))
                add(f"{node} eval", r - 1, per_node.get("evaluate"))
        final = self.final_eval
        if final is not None and final.model_round is not None:
            add("federated eval", final.model_round, final.evaluate)
        return out

    def epsilon_series(self) -> Series:
        """Per DP level (any level a record's ``privacy`` holds): (round, epsilon) points."""
        out: Series = {}
        for rec in self.rounds:
            for level, value in epsilons(rec).items():
                out.setdefault(level, []).append((rec.round, value))
        return out


def _record(event: Mapping[str, Any], path: Path, line: int) -> RoundRecord:
    try:
        return RoundRecord.from_event(event)
    except TypeError as exc:  # a field missing: not a line the coordinator wrote
        raise ValueError(f"{path}, line {line}: not a round record ({exc})") from exc


def load_run(run_dir: Path) -> RunSummary:
    """A run's summary from its events.jsonl (ValueError names a line that cannot be read)."""
    path = Path(run_dir) / "events.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no events.jsonl in {run_dir}")
    summary = RunSummary()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            ev = json.loads(line)
            kind = ev.get("event")
            if kind == "start":
                summary.run_id = str(ev.get("run_id", ""))
                summary.model_bytes = int(ev.get("model_bytes", 0))
                summary.started = ev.get("time")
            elif kind == ROUND and ev.get("committed"):
                summary.rounds.append(_record(ev, path, number))
            elif kind == EVALUATE:
                summary.final_eval = _record(ev, path, number)
            elif kind == "stopped" and ev.get("reason"):  # an administrator's stop: final
                summary.ended = ev.get("time")
                summary.status = f"{ev['reason']} (after round {ev.get('round')})"
            elif kind == "stopped":  # the coordinator was stopped; a restart resumes the run
                summary.status = f"stopped after round {ev.get('round')} (resumes on restart)"
            elif kind == "resumed":
                summary.status = "running or interrupted"
            elif kind in ("finished", "aborted"):
                summary.ended = ev.get("time")
                summary.status = f"{kind}: {ev['reason']}" if ev.get("reason") else kind
    return summary


def _fmt(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    keys = [k for k in ("accuracy", "macro_f1", "auroc", "loss") if k in metrics]
    return ", ".join(f"{k} {float(metrics[k]):.4f}" for k in keys) or "-"


def best_round(summary: RunSummary) -> tuple[str, int, float] | None:
    """(which evaluation, round, accuracy) of the best accuracy: server eval, else federated."""
    for name in ("server eval", "federated eval"):
        points = summary.series("accuracy").get(name)
        if points:
            r, acc = max(points, key=lambda p: (p[1], -p[0]))
            return name, r, acc
    return None


def markdown(summary: RunSummary, run_dir: Path) -> str:
    rounds = summary.rounds
    bytes_in = sum(r.bytes_in for r in rounds)
    bytes_out = sum(r.bytes_out for r in rounds)
    lines = [f"# Run {summary.run_id or run_dir.name}", ""]
    lines.append(f"- status: {summary.status}; committed rounds: {len(rounds)}")
    lines.append(f"- model exchanged per node and direction: {summary.model_bytes / 1e6:.3f} MB")
    if rounds:
        mean = sum(r.duration_s for r in rounds) / len(rounds)
        lines.append(
            f"- bytes moved: {bytes_in / 1e6:.2f} MB in (updates), {bytes_out / 1e6:.2f} MB out "
            f"(broadcasts); {(bytes_in + bytes_out) / len(rounds) / 1e6:.2f} MB per round"
        )
        lines.append(f"- seconds per round: {mean:.2f} (mean)")
    if summary.started and summary.ended:
        lines.append(f"- wall time: {summary.ended - summary.started:.1f} s")
    best = best_round(summary)
    if best:
        lines.append(f"- best round ({best[0]}): {best[1]} with accuracy {best[2]:.4f}")
    eps = summary.epsilon_series()
    if eps:
        spent = ", ".join(f"{level} {points[-1][1]:.4f}" for level, points in eps.items())
        entries = [e for rec in rounds for e in (rec.privacy or {}).values()]
        delta = {e.get("delta") for e in entries if isinstance(e, dict)}
        at = ", ".join(f"{d:g}" for d in sorted(d for d in delta if isinstance(d, float)))
        lines.append(f"- privacy spent (epsilon at delta {at or '-'}): {spent}")
    if rounds:
        last = rounds[-1]
        lines += ["", "## Final metrics", ""]
        lines.append(f"- training (round {last.round}): {_fmt(last.train)}")
        if last.server_evaluate:
            lines.append(f"- coordinator held-out: {_fmt(last.server_evaluate)}")
        if summary.final_eval is not None:
            lines.append(
                f"- federated evaluation of the final model: {_fmt(summary.final_eval.evaluate)}"
            )
        extra = "".join(f" eps {level} |" for level in eps)
        lines += [
            "",
            "## Rounds",
            "",
            "| round | train loss | fed-eval acc | server acc | s |" + extra,
        ]
        lines.append("|---:|---:|---:|---:|---:|" + "---:|" * len(eps))
        for r in rounds:
            cells = [
                (r.train or {}).get("loss"),
                (r.evaluate or {}).get("accuracy"),
                (r.server_evaluate or {}).get("accuracy"),
                r.duration_s,
                *(epsilons(r).get(level) for level in eps),
            ]
            text = " | ".join("-" if v is None else f"{float(v):.4f}" for v in cells)
            lines.append(f"| {r.round} | {text} |")
    return "\n".join(lines) + "\n"


def plot(summary: RunSummary, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = summary.epsilon_series()
    fig, axes = plt.subplots(1, 3 if eps else 2, figsize=(16 if eps else 11, 4))
    styles = {"train": "C0", "federated eval": "C1", "server eval": "C2"}
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=False):
        for name, points in summary.series(metric).items():
            xs, ys = zip(*sorted(points), strict=True)
            if name in styles:
                ax.plot(xs, ys, marker="o", ms=3, color=styles[name], label=name, lw=2)
            else:
                color = styles["train"] if name.endswith("train") else styles["federated eval"]
                ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    if eps:  # the privacy spent, next to the accuracy it bought
        plot_epsilon(axes[2], {f"epsilon {level}": points for level, points in eps.items()})
    fig.suptitle(title or f"run {summary.run_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_epsilon(ax: Any, series: Series) -> None:
    """Epsilon per round, one line per series, on a matplotlib axis."""
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=name, lw=2)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (privacy spent)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def write_tensorboard(summary: RunSummary, out: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(out))
    try:
        for metric in ("loss", "accuracy", "macro_f1"):
            for name, points in summary.series(metric).items():
                for r, value in points:
                    writer.add_scalar(f"{metric}/{name.replace(' ', '_')}", value, r)
        for rec in summary.rounds:
            writer.add_scalar("bytes/in", rec.bytes_in, rec.round)
            writer.add_scalar("bytes/out", rec.bytes_out, rec.round)
            writer.add_scalar("seconds/round", rec.duration_s, rec.round)
            for level, value in epsilons(rec).items():
                writer.add_scalar(f"epsilon/{level}", value, rec.round)
    finally:
        writer.close()
    return out


def compare_main(run_dirs: list[Path], out: Path | None, title: str) -> int:
    from fedhive.common.cli import report_compare

    try:
        runs = report_compare.load_runs(run_dirs)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: JSONDecodeError too
        print(f"fedhive report: {exc}", file=sys.stderr)
        return 2
    png = out or run_dirs[0].resolve().parent / "compare.png"
    text = report_compare.markdown(runs)
    png.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    try:
        print(f"curves: {report_compare.plot(runs, png, title)}")
    except ImportError:
        print("matplotlib is not installed (pip install 'fedhive[report]'): no plot written")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fedhive report",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a run directory (holds events.jsonl)")
    p.add_argument(
        "more_runs",
        type=Path,
        nargs="*",
        metavar="RUN_DIR",
        help="more run directories: compare them all side by side (compare.md and compare.png "
        "beside the first run's directory, or --out)",
    )
    p.add_argument("--out", type=Path, help="PNG path (default RUN_DIR/report.png, or compare.png)")
    p.add_argument("--title", default="", help="title of the plot (default none)")
    p.add_argument("--tensorboard", action="store_true", help="also write RUN_DIR/tensorboard")
    ns = p.parse_args(list(argv) if argv is not None else None)
    if ns.more_runs:
        return compare_main([ns.run_dir, *ns.more_runs], ns.out, ns.title)
    try:
        summary = load_run(ns.run_dir)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: JSONDecodeError too
        print(f"fedhive report: {exc}", file=sys.stderr)
        return 2
    text = markdown(summary, ns.run_dir)
    (ns.run_dir / "report.md").write_text(text, encoding="utf-8")
    print(text)
    try:
        png = plot(summary, ns.out or ns.run_dir / "report.png", ns.title)
        print(f"curves: {png}")
    except ImportError:
        print("matplotlib is not installed (pip install 'fedhive[report]'): no plot written")
    if ns.tensorboard:
        try:
            print(f"tensorboard: {write_tensorboard(summary, ns.run_dir / 'tensorboard')}")
        except ImportError:
            print("tensorboard is not installed (pip install tensorboard): no event files")
            return 1
    return 0
