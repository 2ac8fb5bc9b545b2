"""What the choice of rule does to learning, on the digits task, real processes on loopback.

Two scenarios, each run once per rule, then compared with ``fedhive report RUN ...``:

* ``noniid``: 8 nodes with Dirichlet(0.1) label-skewed shares (``fedhive simulate --alpha 0.1``);
  FedAvg against FedAdam and FedYogi (server learning rate ``--eta``, tau 1e-3).
* ``eta``: the same label skew, the server learning rate tuned: FedAdam, FedYogi and FedAdagrad
  (tau 1e-3 each) at every ``--etas`` value, and FedAvg; the best eta of each rule (by its final
  held-out accuracy) is drawn against FedAvg.
* ``byzantine``: 8 nodes with IID shares, 2 of which train and then send their weights
  sign-flipped and scaled by 10 (``tests/integration/byzantine_task.py``); FedAvg against
  FedMedian, FedTrimmedAvg(0.25), MultiKrum(f=2, m=4) and Bulyan(f=1), and FedAvg with the two
  hostile nodes left out (the honest-only reference). A run whose model diverges ends when its
  nodes have declined and left (their count is in ``nodes_failed``).

Prints each run's held-out accuracy per round as a JSON line, then the side-by-side table; the
plot goes to ``OUT/<scenario>/compare.png``. Usage::

    python benchmarks/strategy_learning.py noniid --rounds 20 --out bench-out/strategies
    python benchmarks/strategy_learning.py eta --rounds 20 --etas 0.01 0.03 0.1 0.3 1.0
    python benchmarks/strategy_learning.py byzantine --rounds 10 --out bench-out/strategies
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "fedhive.common.tasks.digits:make_task"
HOSTILE = "tests.integration.byzantine_task:make_task"
CLI = [sys.executable, "-m", "fedhive.common.cli"]
TIMEOUT_S = 1800
COORDINATOR_GRACE_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def strategy_flags(name: str, args: dict[str, Any]) -> list[str]:
    flags = ["--strategy", name]
    for key, value in args.items():
        flags += ["--strategy-arg", f"{key}={value}"]
    return flags


def accuracy(run_dir: Path) -> list[float]:
    out = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "round" and event.get("committed"):
            out.append(round(float(event["server_evaluate"]["accuracy"]), 4))
    return out


def simulate_noniid(work: Path, name: str, args: dict[str, Any], rounds: int, nodes: int) -> Path:
    """One label-skewed digits run of rule ``name``; its run directory."""
    shutil.rmtree(work, ignore_errors=True)
    cmd = [*CLI, "simulate", "--nodes", str(nodes), "--alpha", "0.1", "--rounds", str(rounds)]
    cmd += ["--workdir", str(work), "--no-progress", "--insecure", "--seed", "0"]
    cmd += strategy_flags(name, args)
    subprocess.run(cmd, check=True, timeout=TIMEOUT_S, capture_output=True)
    return work / "run"


def noniid(out: Path, rounds: int, eta: float, nodes: int) -> list[Path]:
    runs = []
    rules = [("fedavg", {}), ("fedadam", {"eta": eta, "tau": 1e-3}), ("fedyogi", {"eta": eta})]
    for name, args in rules:
        run_dir = simulate_noniid(out / name, name, args, rounds, nodes)
        print(json.dumps({"scenario": "noniid", "rule": name, "accuracy": accuracy(run_dir)}))
        runs.append(run_dir)
    return runs


def eta_sweep(out: Path, rounds: int, etas: list[float], nodes: int) -> list[Path]:
    """Each adaptive rule at every eta; returns FedAvg's run and each rule's best eta's run."""
    fedavg = simulate_noniid(out / "fedavg", "fedavg", {}, rounds, nodes)
    curve = accuracy(fedavg)
    print(json.dumps({"scenario": "eta", "rule": "fedavg", "accuracy": curve}), flush=True)
    best_runs = [fedavg]
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        results: list[tuple[float, float, Path]] = []
        for eta in etas:
            args = {"eta": eta, "tau": 1e-3}
            run_dir = simulate_noniid(out / f"{name}-eta{eta:g}", name, args, rounds, nodes)
            curve = accuracy(run_dir)
            final = curve[-1] if curve else 0.0
            row = {"scenario": "eta", "rule": name, "eta": eta, "final": final}
            row["best"] = max(curve, default=0.0)
            print(json.dumps({**row, "accuracy": curve}), flush=True)
            results.append((final, -eta, run_dir))
        final, neg_eta, run_dir = max(results, key=lambda r: (r[0], r[1]))
        print(json.dumps({"scenario": "eta", "rule": name, "best_eta": -neg_eta, "final": final}))
        best_runs.append(run_dir)
    return best_runs


def byzantine(out: Path, rounds: int, nodes: int, hostile: int) -> list[Path]:
    from fedhive.common.tasks import digits

    data = out / "data"
    server_dir, dirs = digits.prepare_simulation(data, nodes, None, 0)
    rules: list[tuple[str, str, dict[str, Any], int]] = [
        ("honest-only", "fedavg", {}, 0),
        ("fedavg", "fedavg", {}, hostile),
        ("fedmedian", "fedmedian", {}, hostile),
        ("fedtrimmedavg", "fedtrimmedavg", {"beta": 0.25}, hostile),
        ("multikrum", "multikrum", {"f": hostile, "m": nodes - 2 * hostile}, hostile),
        ("bulyan", "bulyan", {"f": 1}, hostile),
    ]
    runs = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"
    for label, name, args, bad in rules:
        count = nodes - (hostile if label == "honest-only" else 0)
        work = out / label
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        port = free_port()
        server = [*CLI, "server", "--address", f"127.0.0.1:{port}", "--run-dir", str(work / "run")]
        server += ["--task", DIGITS, "--rounds", str(rounds), "--min-nodes", str(count)]
        server += ["--min-updates", str(count), "--eval-data", str(server_dir), "--insecure"]
        server += ["--no-progress", *strategy_flags(name, args)]
        logs = [open(work / "coordinator.log", "wb")]  # noqa: SIM115
        procs = [subprocess.Popen(server, stdout=logs[0], stderr=logs[0], env=env, cwd=ROOT)]
        members = dirs[hostile:] if label == "honest-only" else dirs
        for i, folder in enumerate(members):
            task = HOSTILE if i < bad else DIGITS
            node = [*CLI, "client", "--server", f"127.0.0.1:{port}", "--task", task, "--insecure"]
            node += ["--data", str(folder), "--name", f"n{i}", "--seed", str(i), "--device", "cpu"]
            node += ["--max-connect-attempts", "30"]
            logs.append(open(work / f"node-{i}.log", "wb"))  # noqa: SIM115
            procs.append(
                subprocess.Popen(node, stdout=logs[-1], stderr=logs[-1], env=env, cwd=ROOT)
            )
        try:
            node_codes = [p.wait(timeout=TIMEOUT_S) for p in procs[1:]]
            # nodes whose training diverged decline and leave; the coordinator would wait for
            # them until its join timeout: stop it then (SIGTERM: a clean stop)
            try:
                code = procs[0].wait(timeout=COORDINATOR_GRACE_S)
            except subprocess.TimeoutExpired:
                procs[0].terminate()
                code = procs[0].wait(timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for f in logs:
                f.close()
        if code != 0:
            raise SystemExit(f"{label}: coordinator exit {code}; see {work}")
        run_dir = work / "run"
        row = {"scenario": "byzantine", "rule": label, "hostile": bad, "nodes": count}
        row["nodes_failed"] = sum(c != 0 for c in node_codes)
        print(json.dumps({**row, "accuracy": accuracy(run_dir)}), flush=True)
        runs.append(run_dir)
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=["noniid", "eta", "byzantine"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--hostile", type=int, default=2, help="byzantine: poisoning nodes")
    p.add_argument("--eta", type=float, default=0.01, help="noniid: the server learning rate")
    p.add_argument(
        "--etas",
        type=float,
        nargs="+",
        default=[0.01, 0.03, 0.1, 0.3, 1.0],
        help="eta: the server learning rates tried per rule",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "strategies")
    ns = p.parse_args()
    out = ns.out / ns.scenario
    out.mkdir(parents=True, exist_ok=True)
    if ns.scenario == "noniid":
        runs = noniid(out, ns.rounds, ns.eta, ns.nodes)
    elif ns.scenario == "eta":
        runs = eta_sweep(out, ns.rounds, ns.etas, ns.nodes)
    else:
        runs = byzantine(out, ns.rounds, ns.nodes, ns.hostile)
    report = [*CLI, "report", *map(str, runs), "--out", str(out / "compare.png")]
    report += ["--title", f"digits, {ns.nodes} nodes: {ns.scenario}"]
    subprocess.run(report, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
