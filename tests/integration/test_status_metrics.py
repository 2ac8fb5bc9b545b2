"""Prometheus metrics during a real run: a coordinator with ``[status]`` on loopback, two node
processes; /metrics is scraped while rounds commit."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from tests.integration.harness import start_coordinator, start_node, wait_all

ROUNDS = 4
DEADLINE_S = 60.0
NODE_ARGS = {"params": 1000, "tensors": 3, "train_s": 0.3}  # each round lasts >= 0.3 s


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_show_rounds_committed_rising_during_a_run(tmp_path: Path) -> None:
    # Prepare: a coordinator serving /metrics on a free loopback port, two nodes
    coord = start_coordinator(
        tmp_path, rounds=ROUNDS, min_nodes=2, min_updates=2, status={"port": 0}
    )
    url = coord.running.status.server.url
    before = scrape(url)
    nodes = [
        start_node(coord.address, f"n{i}", i, task_args=NODE_ARGS, log=tmp_path / f"n{i}.log")
        for i in range(2)
    ]

    # Execute: scrape while the run goes on, keeping every distinct count of committed rounds
    seen: list[float] = []
    connected = 0.0
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and coord.thread.is_alive():
        samples = scrape(url)
        count = samples["fedhive_rounds_committed_total"]
        connected = max(connected, samples["fedhive_connected_nodes"])
        if not seen or count != seen[-1]:
            seen.append(count)
        if count >= ROUNDS - 1:
            break
        time.sleep(0.05)
    history = coord.join(DEADLINE_S)
    codes = wait_all(nodes)

    # Assert: the count rose round by round while the run was live; the run itself is unchanged
    assert before["fedhive_rounds_committed_total"] == 0
    assert before["fedhive_queue_length"] == 1
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] >= ROUNDS - 1, seen
    assert connected == 2
    assert [e["committed"] for e in history if e["event"] == "round"] == [True] * ROUNDS
    assert codes == [0, 0]
