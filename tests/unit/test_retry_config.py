"""A retried round is sent with the training config its strategy chose for that attempt (the
encoded task is reused only while its config stays the same)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.wire import serde
from fedhive.common.wire.messages import JoinRequest, TaskHeader, TaskKind
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.coordinator import Coordinator, RunStopped
from fedhive.server.store import RunStore
from fedhive.server.strategy import FedAvg

SPECS = [TensorSpec("w", "float32", (4,))]


class Counting(FedAvg):
    """FedAvg that numbers each configure() call in the training config."""

    calls = 0

    def configure(self, round_: int, config: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {**config, "call": self.calls}


def test_a_retried_round_carries_the_config_chosen_for_its_attempt(tmp_path: Path) -> None:
    # Prepare: one node, one round that is retried once if it fails
    config = ServerConfig(
        min_nodes=1,
        rounds=1,
        max_round_retries=1,
        federated_evaluation=False,
        insecure=True,
        run_dir=tmp_path / "run",
    )
    store = RunStore(tmp_path / "run")
    store.create(config.model_dump(mode="json"), "r")
    coord = Coordinator(config, SPECS, [np.zeros(4, np.float32)], store, aggregator=Counting())
    auth = coord.join(JoinRequest("n", num_examples=5)).auth
    stopped: list[RunStopped] = []
    thread = threading.Thread(target=_run, args=(coord, stopped))

    # Execute: the node pulls attempt 0 and declines it, then pulls attempt 1
    thread.start()
    first = serde.task_message_from_bytes(next(iter(coord.pull(auth, 10.0))))
    coord.decline(auth, 1, "busy")
    second = serde.task_message_from_bytes(next(iter(coord.pull(auth, 10.0))))
    coord.stop()
    thread.join(timeout=30)

    # Assert: each attempt's task holds that attempt's config
    assert isinstance(first, TaskHeader) and isinstance(second, TaskHeader)
    assert first.kind == second.kind == TaskKind.TRAIN
    assert (first.config["call"], second.config["call"]) == (1, 2)
    assert stopped and not thread.is_alive()


def _run(coord: Coordinator, stopped: list[RunStopped]) -> None:
    try:
        coord.run()
    except RunStopped as exc:
        stopped.append(exc)
