"""The coordinator's secure round: step calls that wait a bounded time, the masked upload's words,
the round's parameters as task config, and which nodes a secure round selects."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from fedhive.client.secagg import SecureTask
from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError, InvalidUpdateError, StaleRoundError
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.messages import AwaitUnmask, SecAggRequest
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.wire import serde
from fedhive.common.wire.messages import JoinRequest, NodeAuth, TaskHeader, TaskKind
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.coordinator import Coordinator, RunAborted
from fedhive.server.secagg_round import PENDING, SecAggRound
from fedhive.server.secure import open_secure_round, word_blocks
from fedhive.server.store import RunStore
from fedhive.server.strategy import FedAvg
from tests.unit.secagg.harness import fixed_identity, node_ids

SPECS = [TensorSpec("w", "float32", (10,)), TensorSpec("b", "float32", (3,))]


def _identities(n: int) -> dict[str, bytes]:
    return {u: fixed_identity(i).public_key().public_bytes_raw() for i, u in enumerate(node_ids(n))}


def test_a_step_answers_pending_then_a_repeated_call_gets_the_output() -> None:
    # Prepare
    ids = node_ids(3)
    graph = Graph.build(ids, seed=1)
    directory = {u: fixed_identity(i).public_key() for i, u in enumerate(ids)}
    rnd = SecAggRound(graph, 1, 14, directory, step_timeout_s=60.0)
    machines = [
        NodeSecAgg(u, fixed_identity(i), directory, graph, 1, 14) for i, u in enumerate(ids)
    ]
    adverts = [m.advertise() for m in machines]

    # Execute: node 0 advertises before the others, with no time to wait
    first = rnd.advertise(ids[0], adverts[0], wait_s=0.0)
    for u, a in zip(ids[1:], adverts[1:], strict=True):
        rnd.advertise(u, a, wait_s=0.0)
    repeat = rnd.advertise(ids[0], adverts[0], wait_s=0.0)

    # Assert: pending first; the repeat delivers nothing twice and returns the neighbours' adverts
    assert first is PENDING
    assert isinstance(repeat, list) and sorted(a.node for a in repeat) == ids[1:]
    assert rnd.step == "shares"


def test_masked_words_cut_anywhere_are_reassembled() -> None:
    # Prepare
    words = np.random.default_rng(3).integers(0, 1 << 32, 1000, dtype=np.uint32)
    raw = words.astype("<u4").tobytes()
    pieces = [raw[:5], raw[5:1003], raw[1003:1004], raw[1004:]]

    # Execute
    blocks = list(word_blocks(pieces))

    # Assert
    assert blocks[0].start == 0
    assert np.array_equal(np.concatenate([b.values for b in blocks]), words)
    assert all(b.stop == nxt.start for b, nxt in itertools.pairwise(blocks))


def test_masked_upload_with_stray_bytes_is_refused() -> None:
    with pytest.raises(InvalidUpdateError, match="stray byte"):
        list(word_blocks([b"\x00" * 9]))


def test_a_secure_round_that_can_overflow_is_refused() -> None:
    # Prepare: 16 bits and max_weight 1024 allow at most 64 nodes per round
    config = ServerConfig(secure_aggregation="secagg+", secagg_bits=16, secagg_max_weight=1024)
    identities = {f"n{i}": bytes(32) for i in range(70)}

    # Execute / Assert
    with pytest.raises(ConfigError, match="overflow"):
        open_secure_round(config, SPECS, 1, 0, identities)


def test_the_round_parameters_travel_as_task_config_and_nodes_rebuild_the_graph() -> None:
    # Prepare
    config = ServerConfig(secure_aggregation="secagg+", secagg_clip=2.0, secagg_bits=12)

    # Execute
    secure = open_secure_round(config, SPECS, 3, 1, _identities(4))
    task = SecureTask.from_config(secure.task_config)

    # Assert
    assert task is not None and task.round == secure.id != 3
    assert task.graph.nodes == secure.rnd.machine.graph.nodes
    assert task.graph.threshold == secure.rnd.machine.graph.threshold
    assert (task.quant.clip, task.quant.bits) == (2.0, 12)
    assert json.loads(secure.task_config["secagg_nodes"]) == node_ids(4)
    assert secure.upload_specs == [TensorSpec("secagg.masked", "int32", (14,))]
    assert SecureTask.from_config({"lr": 0.1}) is None


def test_broken_round_parameters_are_named() -> None:
    with pytest.raises(InvalidUpdateError, match="secure round parameters"):
        SecureTask.from_config({"secagg": "secagg+", "secagg_nodes": "[1"})


def test_a_step_for_another_round_is_stale() -> None:
    # Prepare
    config = ServerConfig(secure_aggregation="secagg+")
    secure = open_secure_round(config, SPECS, 1, 0, _identities(3))
    body = AwaitUnmask()
    request = SecAggRequest(NodeAuth("node-00", b"x" * 32), secure.id + 1, 0.0, body)

    # Execute / Assert
    with pytest.raises(StaleRoundError, match="secure round"):
        secure.step("node-00", request)


def test_a_secure_round_selects_only_nodes_that_sent_an_identity_key(tmp_path: Path) -> None:
    # Prepare: three nodes join, one without an identity key
    config = ServerConfig(secure_aggregation="secagg+", min_nodes=2, run_dir=tmp_path / "run")
    initial = [np.zeros(10, np.float32), np.zeros(3, np.float32)]
    coord = Coordinator(config, SPECS, initial, RunStore(tmp_path / "run"))
    keys = [fixed_identity(i).public_key().public_bytes_raw() for i in range(2)]
    keyed = [coord.join(JoinRequest(f"k{i}", identity_key=k)) for i, k in enumerate(keys)]
    plain = coord.join(JoinRequest("plain"))
    aborted: list[BaseException] = []

    def drive() -> None:
        try:
            coord.run()
        except RunAborted as exc:
            aborted.append(exc)

    thread = threading.Thread(target=drive)

    # Execute
    thread.start()
    tasks = [serde.task_message_from_bytes(next(iter(coord.pull(r.auth, 10.0)))) for r in keyed]
    other = serde.task_message_from_bytes(next(iter(coord.pull(plain.auth, 0.2))))
    coord.stop()
    thread.join(timeout=30)

    # Assert
    assert all(isinstance(t, TaskHeader) and t.kind == TaskKind.TRAIN for t in tasks)
    header = tasks[0]
    assert isinstance(header, TaskHeader)
    nodes = json.loads(str(header.config["secagg_nodes"]))
    assert nodes == sorted(r.auth.node_id for r in keyed)
    assert isinstance(other, TaskHeader) and other.kind == TaskKind.WAIT
    assert aborted and not thread.is_alive()


def test_a_custom_aggregator_cannot_run_under_secure_aggregation(tmp_path: Path) -> None:
    # Prepare: an aggregator that would need to see each update
    class Median(FedAvg):
        needs_updates = True

    config = ServerConfig(secure_aggregation="secagg+", run_dir=tmp_path / "run")
    initial = [np.zeros(10, np.float32), np.zeros(3, np.float32)]

    # Execute / Assert
    with pytest.raises(ConfigError, match="the strategy Median must see each update"):
        Coordinator(config, SPECS, initial, RunStore(tmp_path / "run"), aggregator=Median())
