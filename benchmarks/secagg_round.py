"""Seconds per round over real gRPC, plain FedAvg vs SecAgg+, side by side in one run.

    python benchmarks/secagg_round.py --nodes 10 --params 1000000 --rounds 4

For each mode it starts one coordinator process and ``--nodes`` node processes with the constant
task (``fedhive.common.tasks.constant:make_task``), the mode set through a ``--config`` TOML
(``secure_aggregation = "secagg+"`` or not), and reads the run's ``events.jsonl``: the median
``duration_s`` of the committed rounds after the first (round 1 also pays for joining and
warm-up), plus upload bytes per node per round. Prints one JSON line per mode and a Markdown
table row. Figures, not a test: expect noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from round_overhead import add_node_threads_arg, node_threads  # same folder: run as a script

TASK = "fedhive.common.tasks.constant:make_task"
COMMON = (
    "federated_evaluation = false\nheartbeat_interval_s = 2.0\nheartbeat_timeout_s = 120.0\n"
    "round_timeout_s = 1800.0\njoin_timeout_s = 600.0\n"
)
SECURE = (
    'secure_aggregation = "secagg+"\nsecagg_clip = 64.0\nsecagg_bits = 16\n'
    "secagg_max_weight = 1024\nsecagg_step_timeout_s = 600.0\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(proc: subprocess.Popen[bytes], timeout: float | None = None) -> float:
    """Reap ``proc`` (killed after ``timeout`` s) and return its user + system CPU seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            deadline = None
        time.sleep(0.05)


def run_mode(
    secure: bool,
    nodes: int,
    params: int,
    rounds: int,
    tensors: int,
    level: str = "WARNING",
    node_threads: int = 0,
    settings: tuple[str, ...] = (),
    extra_task_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"fedhive-secagg-{'secure' if secure else 'plain'}-"))
    extra = "".join(f"{line}\n" for line in settings)
    (tmp / "server.toml").write_text(COMMON + (SECURE if secure else "") + extra)
    port = free_port()
    address = f"127.0.0.1:{port}"
    task_args = ["--task-arg", f"params={params}", "--task-arg", f"tensors={tensors}"]
    for arg in extra_task_args:
        task_args += ["--task-arg", arg]
    server = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--config", str(tmp / "server.toml"),
        "--address", address, "--run-dir", str(tmp / "run"), "--task", TASK, *task_args,
        "--rounds", str(rounds), "--min-nodes", str(nodes), "--no-progress", "--insecure",
        "--log-level", level,
    ]  # fmt: skip
    started = time.monotonic()
    with open(tmp / "coordinator.log", "wb") as log:
        coord = subprocess.Popen(server, stdout=log, stderr=log)
    procs = []
    node_env = dict(os.environ)
    if node_threads > 0:  # as `fedhive simulate`: N nodes share this machine's cores
        node_env["OMP_NUM_THREADS"] = str(node_threads)
    for i in range(nodes):
        client = [
            sys.executable, "-m", "fedhive.common.cli", "client", "--server", address,
            "--task", TASK, *task_args, "--name", f"b{i}", "--seed", str(i), "--device", "cpu",
            "--max-connect-attempts", "30", "--log-level", level, "--insecure",
        ]  # fmt: skip
        with open(tmp / f"node{i}.log", "wb") as log:
            procs.append(subprocess.Popen(client, stdout=log, stderr=log, env=node_env))
    coord_cpu = cpu_of(coord)
    node_cpu = 0.0
    for p in procs:
        node_cpu += cpu_of(p, timeout=60)
    wall = time.monotonic() - started
    events = [json.loads(x) for x in (tmp / "run" / "events.jsonl").read_text().splitlines()]
    committed = [e for e in events if e["event"] == "round" and e["committed"]]
    timed = [e for e in committed if e["round"] > 1] or committed
    return {
        "mode": "secagg+" if secure else "plain",
        "nodes": nodes,
        "params": params,
        "rounds": rounds,
        "committed": len(committed),
        "coord_exit": coord.returncode,
        "s_per_round": round(statistics.median(e["duration_s"] for e in timed), 3)
        if timed
        else None,
        "round_s": [round(e["duration_s"], 3) for e in committed],
        "aggregate_s": [e.get("aggregate_s") for e in committed],
        "upload_bytes_per_node": committed[-1]["bytes_in"] // len(committed[-1]["reported"])
        if committed
        else None,
        "wall_s": round(wall, 1),
        # CPU seconds of the whole run (joining and start-up included), per round
        "coordinator_cpu_s_per_round": round(coord_cpu / rounds, 3),
        "nodes_cpu_s_per_round": round(node_cpu / rounds, 3),
        "node_threads": node_threads or None,
        "dir": str(tmp),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--tensors", type=int, default=8)
    p.add_argument("--log-level", default="WARNING", help="of the coordinator and node processes")
    add_node_threads_arg(p)
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a line of the coordinator's TOML config for both modes (repeatable)",
    )
    p.add_argument(
        "--task-arg",
        dest="task_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of the constant task for both modes, e.g. train_s=1.0 (seconds each "
        "node's fit() takes, a stand-in for real training; default 0)",
    )
    ns = p.parse_args()
    threads = node_threads(ns.node_threads, ns.nodes)
    results = [
        run_mode(
            s,
            ns.nodes,
            ns.params,
            ns.rounds,
            ns.tensors,
            ns.log_level,
            threads,
            tuple(ns.settings),
            tuple(ns.task_args),
        )
        for s in (False, True)
    ]
    for r in results:
        print(json.dumps(r))
    plain, secure = results
    ratio = (
        secure["s_per_round"] / plain["s_per_round"]
        if plain["s_per_round"] and secure["s_per_round"]
        else float("nan")
    )
    upload = secure["upload_bytes_per_node"] / (4 * ns.params) if ns.params else float("nan")
    added = (
        secure["s_per_round"] - plain["s_per_round"]
        if plain["s_per_round"] and secure["s_per_round"]
        else float("nan")
    )
    print(
        "| N | P | task args | plain s/round | SecAgg+ s/round | ratio | SecAgg+ adds s | node "
        "CPU-s/round plain | SecAgg+ | coordinator CPU-s/round plain | SecAgg+ | masked upload / "
        "float32 |"
    )
    print(
        f"| {ns.nodes} | {ns.params:,} | {' '.join(ns.task_args) or '-'} | {plain['s_per_round']} "
        f"| {secure['s_per_round']} | {ratio:.2f} | {added:.3f} | "
        f"{plain['nodes_cpu_s_per_round']} | {secure['nodes_cpu_s_per_round']} | "
        f"{plain['coordinator_cpu_s_per_round']} | {secure['coordinator_cpu_s_per_round']} | "
        f"{upload:.5f} |"
    )
    ok = all(r["committed"] == ns.rounds and r["coord_exit"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
