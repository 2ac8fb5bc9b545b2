"""The same Flower app under Flower's deployment runtime and under fedhive, side by side.

The app is tests/flower_apps (PyTorch CNN on scikit-learn's digits, the Message API ClientApp,
unchanged). Flower: ``flower-superlink``, N ``flower-supernode --node-config "partition-id=i
num-partitions=N"`` and ``flwr run`` of tests/flower_apps/project (its ServerApp runs FedAvg and
notes when each round's global model is ready). fedhive: ``fedhive server`` (the Flower task,
initial model from the app's ``Net``) and N ``fedhive client --flower-app``. Both run R rounds of
FedAvg with the same ``lr`` / ``local-epochs``, one after the other, on loopback, plain text,
one training thread per node, Flower's settings left at its defaults.

Measured for each: seconds per round (from one round's global model to the next: Flower's
ServerApp clock, fedhive's round commit times in events.jsonl; round 1 from the moment the
initial model was sent out), the run's wall time (submit / nodes started to the final model), and
peak RSS sampled every 0.2 s from ``/proc``: the coordinator side (Flower: the SuperLink and its
process tree, i.e. SuperExec and the ``flwr-serverapp`` process; fedhive: the ``fedhive server``
process) and the node side (the largest node: Flower's SuperNode tree with its SuperExec and
each message's ``flwr-clientapp``; fedhive's ``fedhive client`` process). "sum of peaks" adds
each process's own ``VmHWM`` (an upper bound on the tree's peak); "peak of sum" is the largest
total ``VmRSS`` seen in one sample. It also checks that both runs ended with the same model.

Usage (from the repository root, with the ``flower`` extra installed)::

    nice -n 10 python benchmarks/flower_vs_fedhive.py --nodes 3 --rounds 3
    nice -n 10 python benchmarks/flower_vs_fedhive.py --nodes 3 --rounds 3 --evaluate

Prints one JSON line per system and a markdown table. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from round_overhead import _children, _status_kb  # noqa: E402  (beside this script)

from tests.integration.flower_runtime import (  # noqa: E402
    CLIENT_APP,
    FlowerRun,
    fedhive_events,
    fedhive_server,
    flower_metrics,
    flower_node,
    free_port,
    stop,
    tail,
)

SAMPLE_S = 0.2
MB = 1024.0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:4] if a]
    return next((w for w in words if w.startswith(("flwr", "flower", "fedhive"))), " ".join(words))


@dataclass
class Tree:
    """A process and its descendants: each one's peak RSS, and the largest total in a sample."""

    root: int
    peaks_kb: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    peak_total_kb: int = 0

    def sample(self) -> None:
        total = 0
        for pid in [self.root, *_children(self.root)]:
            hwm, rss = _status_kb(pid, "VmHWM"), _status_kb(pid, "VmRSS")
            if hwm is None or rss is None:
                continue
            if not self.names.get(pid):  # a process just started may not have its argv yet
                self.names[pid] = _name(pid)
            self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), hwm)
            total += rss
        self.peak_total_kb = max(self.peak_total_kb, total)

    @property
    def sum_of_peaks_kb(self) -> int:
        return sum(self.peaks_kb.values())

    def by_name(self) -> dict[str, float]:
        """Largest peak per process kind, MB."""
        out: dict[str, float] = {}
        for pid, kb in self.peaks_kb.items():
            name = self.names[pid]
            out[name] = max(out.get(name, 0.0), round(kb / MB, 1))
        return out


def watch(trees: list[Tree], waiting: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Sample every tree until every process in ``waiting`` has exited (or the timeout)."""
    end = time.monotonic() + timeout_s
    while any(p.poll() is None for p in waiting):
        if time.monotonic() > end:
            raise TimeoutError(f"still running after {timeout_s} s")
        for tree in trees:
            tree.sample()
        time.sleep(SAMPLE_S)


def memory(coord: Tree, nodes: list[Tree]) -> dict[str, Any]:
    node = max(nodes, key=lambda t: t.sum_of_peaks_kb)
    return {
        "coord_peak_of_sum_mb": round(coord.peak_total_kb / MB, 1),
        "coord_sum_of_peaks_mb": round(coord.sum_of_peaks_kb / MB, 1),
        "coord_processes": coord.by_name(),
        "node_peak_of_sum_mb": round(max(t.peak_total_kb for t in nodes) / MB, 1),
        "node_sum_of_peaks_mb": round(node.sum_of_peaks_kb / MB, 1),
        "node_processes": node.by_name(),
    }


def per_round(times: list[float]) -> dict[str, Any]:
    """From the moments each global model was ready (index 0: the initial one)."""
    rounds = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    return {
        "sec_per_round": rounds,
        "sec_per_round_median": round(statistics.median(rounds), 2),
    }


def run_flower(work: Path, args: argparse.Namespace, final_model: Path) -> dict[str, Any]:
    flower = FlowerRun(work, nodes=args.nodes)
    run_config = {
        "num-server-rounds": args.rounds, "min-nodes": args.nodes, "seed": 0,
        "fraction-evaluate": 1.0 if args.evaluate else 0.0, "final-model": str(final_model),
        "lr": args.lr, "local-epochs": args.epochs,
    }  # fmt: skip
    try:
        flower.start()
        link, *supernodes = flower.procs
        trees = [Tree(link.pid), *(Tree(p.pid) for p in supernodes)]
        started = time.time()
        submit = flower.run(run_config)
        watch(trees, [submit], args.timeout)
        wall = time.time() - started
    finally:
        flower.stop()
    if submit.returncode != 0 or not final_model.exists():
        raise RuntimeError(f"Flower's run failed: {flower.log_tail()}")
    times = flower_metrics(final_model)["time"]
    return {
        "system": "Flower 1.41 deployment runtime",
        "run_wall_s": round(wall, 1),
        **per_round([times[r] for r in sorted(times)]),
        **memory(trees[0], trees[1:]),
    }


def run_fedhive(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    train = {"lr": args.lr, "local-epochs": args.epochs}
    config = work / "server.toml"
    config.write_text(f"federated_evaluation = {'true' if args.evaluate else 'false'}\n")
    procs = []
    try:
        server = fedhive_server(work, port, args.nodes, args.rounds, train, config=config)
        procs.append(server)
        started = time.time()
        nodes = [
            flower_node(
                f"127.0.0.1:{port}", CLIENT_APP, i, work / f"site-{i}.log", "--threads", "1",
                nodes=args.nodes,
            )
            for i in range(args.nodes)
        ]  # fmt: skip
        procs += nodes
        trees = [Tree(server.pid), *(Tree(p.pid) for p in nodes)]
        watch(trees, [server], args.timeout)
        wall = time.time() - started
    finally:
        stop(procs)
    if server.returncode != 0:
        raise RuntimeError(f"fedhive server failed: {tail(work / 'fedhive-server.log')}")
    rounds = [e for e in fedhive_events(work / "run") if e["event"] == "round" and e["committed"]]
    times = [rounds[0]["time"] - rounds[0]["duration_s"], *(e["time"] for e in rounds)]
    return {
        "system": "fedhive",
        "run_wall_s": round(wall, 1),
        **per_round(times),
        **memory(trees[0], trees[1:]),
    }


def same_model(flower_final: Path, run_dir: Path, rounds: int) -> float:
    """Largest absolute difference between the two final global models."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    theirs = {n: t.numpy() for n, t in torch.load(flower_final).items()}
    ours = load_file(str(run_dir / "models" / f"round-{rounds:04d}.safetensors"))
    return max(float(np.max(np.abs(ours[n] - theirs[n]))) for n in theirs)


def same_metrics(flower_final: Path, run_dir: Path) -> dict[str, float | None]:
    """Largest relative difference between the two runs' aggregated metrics: train (round r)
    and evaluate (Flower evaluates round r's model after it; fedhive in round r+1, and the last
    one in its final evaluation)."""
    theirs = flower_metrics(flower_final)
    events = fedhive_events(run_dir)
    rounds = {e["round"]: e for e in events if e["event"] == "round"}
    final = [e["evaluate"] for e in events if e["event"] == "evaluate"]
    ours_eval = {r - 1: e["evaluate"] for r, e in rounds.items() if "evaluate" in e}
    if final:
        ours_eval[max(rounds)] = final[-1]

    def worst(pairs: list[tuple[float, float]]) -> float | None:
        return max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=None)

    train = [(rounds[r]["train"][k], v) for r, m in theirs["train"].items() for k, v in m.items()]
    evals = [(ours_eval[r][k], v) for r, m in theirs["evaluate"].items() for k, v in m.items()]
    return {"max_rel_train_metric_diff": worst(train), "max_rel_eval_metric_diff": worst(evals)}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| system | s/round (median) | s/round (each) | run wall s | coordinator peak RSS MB "
        "(peak of sum / sum of peaks) | largest node MB (peak of sum / sum of peaks) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['system']} | {r['sec_per_round_median']} | {r['sec_per_round']} | "
            f"{r['run_wall_s']} | {r['coord_peak_of_sum_mb']} / {r['coord_sum_of_peaks_mb']} | "
            f"{r['node_peak_of_sum_mb']} / {r['node_sum_of_peaks_mb']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="local-epochs (default 1)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--evaluate", action="store_true", help="federated evaluation on both sides")
    p.add_argument("--timeout", type=float, default=900.0, help="per system, seconds")
    p.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        work = Path(tmp)
        load_before = os.getloadavg()[0]
        final_model = work / "flower" / "final_model.pt"
        results = [run_flower(work / "flower", args, final_model), run_fedhive(work / "ours", args)]
        diff = same_model(final_model, work / "ours" / "run", args.rounds)
        metrics = same_metrics(final_model, work / "ours" / "run")
        load_after = os.getloadavg()[0]
        for r in results:
            r.update(
                nodes=args.nodes, rounds=args.rounds, evaluate=args.evaluate,
                max_abs_model_diff=diff, **metrics,
                loadavg=[round(load_before, 1), round(load_after, 1)],
            )  # fmt: skip
            print(json.dumps(r), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
