"""Load scenario: many lightweight nodes (threads in one process) against one coordinator process.

    python benchmarks/load.py --nodes 100 --rounds 20

Prints one JSON line: rounds per minute, failed rounds, the coordinator's peak RSS and its open
file descriptors / RSS sampled at every round boundary (they must not grow round over round).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TASK = "fedhive.common.tasks.constant:make_task"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> tuple[int, int, int]:
    """(VmRSS kB, VmHWM kB, open fds)."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--params", type=int, default=10_000)
    ns = p.parse_args()

    from fedhive.client.node import Node
    from fedhive.client.transport import GrpcTransport
    from fedhive.common.config import ClientConfig
    from fedhive.common.runtime.memory import tune_malloc

    tune_malloc()
    tmp = Path(tempfile.mkdtemp(prefix="fedhive-load-"))
    port = free_port()
    (tmp / "server.toml").write_text(
        "federated_evaluation = false\nheartbeat_interval_s = 5.0\nheartbeat_timeout_s = 60.0\n"
    )
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--config", str(tmp / "server.toml"),
        "--address", f"127.0.0.1:{port}", "--run-dir", str(tmp / "run"), "--task", TASK,
        "--task-arg", f"params={ns.params}", "--rounds", str(ns.rounds),
        "--min-nodes", str(ns.nodes), "--no-progress", "--log-level", "WARNING", "--insecure",
    ]  # fmt: skip
    with open(tmp / "coordinator.log", "wb") as log:
        coord = subprocess.Popen(cmd, stdout=log, stderr=log)
    args = {"params": ns.params}
    nodes = [
        Node(
            ClientConfig(server=f"127.0.0.1:{port}", task=TASK, task_args=args, name=f"l{i}",
                         seed=i % 7, device="cpu", backoff_max_s=1.0, insecure=True),
            GrpcTransport(f"127.0.0.1:{port}"),
        )
        for i in range(ns.nodes)
    ]  # fmt: skip
    threads = [threading.Thread(target=n.run, daemon=True) for n in nodes]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, int, int, int]] = []
    while coord.poll() is None:
        try:
            rss, hwm, fds = proc_status(coord.pid)
            samples.append((time.time(), rss, hwm, fds))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1)
    wall = time.monotonic() - started
    for t in threads:
        t.join(timeout=30)
    events = [json.loads(x) for x in (tmp / "run" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    committed = [e for e in rounds if e["committed"]]
    first_open = min(e["time"] - e["duration_s"] for e in rounds) if rounds else started
    span = (max(e["time"] for e in rounds) - first_open) if rounds else wall
    per_round = []
    for e in committed:
        before = [s for s in samples if s[0] <= e["time"]]
        if before:
            per_round.append({"round": e["round"], "rss_mb": before[-1][1] / 1024,
                              "fds": before[-1][3]})  # fmt: skip
    print(
        json.dumps(
            {
                "nodes": ns.nodes,
                "rounds": ns.rounds,
                "params": ns.params,
                "committed_rounds": len(committed),
                "failed_rounds": len(rounds) - len(committed),
                "rounds_per_min": round(60 * len(committed) / span, 2) if span > 0 else None,
                "coord_exit": coord.returncode,
                "coord_peak_rss_mb": round(max(s[2] for s in samples) / 1024, 1),
                "fds_first_last": [per_round[0]["fds"], per_round[-1]["fds"]] if per_round else [],
                "rss_mb_first_last": (
                    [round(per_round[0]["rss_mb"], 1), round(per_round[-1]["rss_mb"], 1)]
                    if per_round
                    else []
                ),
                "per_round": per_round,
            }
        )
    )
    return 0 if len(committed) == ns.rounds and coord.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
