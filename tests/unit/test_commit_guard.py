"""The round engine's last line of defence: a non-finite aggregate is never committed, whatever
the aggregator computed (the wire-level checks refuse updates that could cause one first)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.wire.chunks import Chunk, payload_digest
from fedhive.common.wire.messages import JoinRequest, UpdateHeader, UpdateTrailer
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.coordinator import Coordinator, RunAborted
from fedhive.server.store import RunStore
from fedhive.server.strategy import FedAvg, StagedUpdate

SPECS = [TensorSpec("w", "float32", (4,))]


class Exploding(FedAvg):
    """FedAvg whose result overflows (as an unchecked float32 sum would)."""

    def fold(self, update: StagedUpdate) -> None:
        self.updates += 1
        self.total_examples += update.num_examples

    def finalize(self) -> list[np.ndarray]:
        return [np.full(4, np.inf, dtype=np.float32)]


def test_a_non_finite_aggregate_is_not_committed(tmp_path: Path) -> None:
    # Prepare: one node, one round that stops the run if it fails
    config = ServerConfig(
        min_nodes=1,
        rounds=1,
        on_failed_round="stop",
        federated_evaluation=False,
        insecure=True,
        run_dir=tmp_path / "run",
    )
    store = RunStore(tmp_path / "run")
    store.create(config.model_dump(mode="json"), "r")
    coord = Coordinator(config, SPECS, [np.zeros(4, np.float32)], store, aggregator=Exploding())
    auth = coord.join(JoinRequest("n", num_examples=5)).auth
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(coord, outcome))

    # Execute: the node pulls its task and sends a valid update
    thread.start()
    list(coord.pull(auth, 10.0))
    data = np.ones(4, np.float32).tobytes()
    session = coord.open_update(UpdateHeader(auth, 1, 5, tuple(SPECS)))
    session.add_chunk(Chunk(0, 0, data))
    session.finish(UpdateTrailer(payload_digest([data])))
    coord.leave(auth)
    thread.join(timeout=30)

    # Assert: the run stopped at round 1, which was recorded as not committed, with no model
    assert outcome and isinstance(outcome[0], RunAborted)
    assert "non-finite values in tensor 'w'" in str(outcome[0])
    (event,) = [e for e in store.events() if e.get("event") == "round"]
    assert event["committed"] is False
    assert not store.model_path(1).exists()
    assert coord.committed_rounds == 0


def _run(coord: Coordinator, outcome: list[BaseException]) -> None:
    try:
        coord.run()
    except RunAborted as exc:
        outcome.append(exc)
