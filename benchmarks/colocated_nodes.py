"""Co-located nodes: seconds per round of N ``fedhive client`` processes started by hand on one
machine (the digits task), for several intra-op thread settings.

Each configuration starts a coordinator (``fedhive server``) and N nodes the way a newcomer does
(no ``OMP_NUM_THREADS`` in their environment unless asked), runs R rounds and reads the round
durations from ``RUN_DIR/events.jsonl``. Round 1 (start-up: imports, first broadcast) is left out.

Usage::

    python benchmarks/colocated_nodes.py                      # N=3, R=8: default, --threads 1
    python benchmarks/colocated_nodes.py --modes default omp=1 threads=2

Modes: ``default`` (no flag, no ``OMP_NUM_THREADS``: whatever the node chooses by itself),
``omp=K`` (``OMP_NUM_THREADS=K`` in the nodes' environment), ``threads=K`` (``--threads K``).
Prints one JSON line per mode (median / min / max seconds per round).
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

TASK = "fedhive.common.tasks.digits:make_task"
CLI = [sys.executable, "-m", "fedhive.common.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mode(mode: str, nodes: int, rounds: int, root: Path, timeout_s: float) -> dict[str, Any]:
    work = root / mode.replace("=", "-")
    names = [f"site-{i}" for i in range(nodes)]
    subprocess.run(
        [*CLI, "prepare", "--out", str(work / "data"), "--nodes", ",".join(names)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    extra: list[str] = []
    if mode.startswith("omp="):
        env["OMP_NUM_THREADS"] = mode.partition("=")[2]
    elif mode.startswith("threads="):
        extra = ["--threads", mode.partition("=")[2]]
    elif mode != "default":
        raise SystemExit(f"unknown mode {mode!r}")
    address = f"127.0.0.1:{free_port()}"
    run_dir = work / "run"
    logs = []
    server_log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    logs.append(server_log)
    server = subprocess.Popen(
        [*CLI, "server", "--insecure", "--address", address, "--run-dir", str(run_dir),
         "--rounds", str(rounds), "--min-nodes", str(nodes), "--task", TASK,
         "--eval-data", str(work / "data" / "server"), "--train", "epochs=2", "--no-progress"],
        stdout=server_log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    clients = []
    for name in names:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        cmd = [*CLI, "client", "--insecure", "--server", address, "--name", name, "--task", TASK]
        cmd += ["--data", str(work / "data" / name), *extra]
        clients.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        server.wait(timeout=timeout_s)
        for c in clients:
            c.wait(timeout=30)
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    durations = [e["duration_s"] for e in events if e.get("event") == "round" and e["round"] > 1]
    chosen = sorted(
        {
            line.split("intra-op threads", 1)[1].strip()
            for name in names
            for line in (work / f"{name}.log").read_text(errors="replace").splitlines()
            if "intra-op threads" in line
        }
    )
    return {
        "mode": mode,
        "nodes": nodes,
        "cpus": len(os.sched_getaffinity(0)),
        "rounds_timed": len(durations),
        "median_s": round(statistics.median(durations), 3),
        "min_s": round(min(durations), 3),
        "max_s": round(max(durations), 3),
        "node_log": chosen,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    p.add_argument("--rounds", type=int, default=8, help="rounds per mode (default 8)")
    p.add_argument(
        "--modes", nargs="+", default=["default", "threads=1"], help="default, omp=K, threads=K"
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds per mode (default 600)")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedhive-colocated-") as tmp:
        for mode in ns.modes:
            started = time.monotonic()
            result = run_mode(mode, ns.nodes, ns.rounds, Path(tmp), ns.timeout)
            result["wall_s"] = round(time.monotonic() - started, 1)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
