"""The proof that a Flower app computes the same under fedhive as under Flower itself: the
unchanged ClientApp of tests/flower_apps run by Flower 1.41's own deployment runtime (SuperLink,
SuperNodes with their node config, ``flwr run`` of the app project whose ServerApp runs FedAvg)
and by fedhive (``fedhive server`` + ``fedhive client --flower-app``), all real processes on
loopback, side by side; both end three rounds with the same global model and the same
aggregated metrics. Skipped only where flwr is not installed."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.integration.flower_runtime import (
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

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="flwr is not installed (the flower extra)"
)

NODES = 2
ROUNDS = 3
TRAIN = {"lr": 0.05, "local-epochs": 1}
MODEL_TOLERANCE = 1e-6  # largest absolute difference between the two global models
METRIC_TOLERANCE = 1e-6  # relative, on each aggregated metric
RUN_TIMEOUT_S = 240.0
SUPEREXEC_POLL_S = 0.1  # how soon Flower's SuperExecs start the ServerApp / a ClientApp


def test_same_model_and_metrics_as_flowers_deployment_runtime(tmp_path: Path) -> None:
    # Prepare: Flower's SuperLink and two SuperNodes (partition-id i of 2) and fedhive's
    # coordinator for the same app and the same [train]; both seed the initial Net() with 0
    flower = FlowerRun(tmp_path / "flower", nodes=NODES, superexec_poll_s=SUPEREXEC_POLL_S)
    final_model = tmp_path / "flower" / "final_model.pt"
    run_config = {
        "num-server-rounds": ROUNDS, "min-nodes": NODES, "fraction-evaluate": 0.0, "seed": 0,
        "final-model": str(final_model), **TRAIN,
    }  # fmt: skip
    ours = tmp_path / "fedhive"
    ours.mkdir()
    port = free_port()
    procs = []
    try:
        flower.start()
        server = fedhive_server(ours, port, NODES, ROUNDS, TRAIN)
        procs.append(server)

        # Execute: both at once (each trains with one thread; they share nothing)
        submit = flower.run(run_config)
        procs.append(submit)
        address = f"127.0.0.1:{port}"
        nodes = [
            flower_node(address, CLIENT_APP, i, ours / f"site-{i}.log", "--threads", "1")
            for i in range(NODES)
        ]
        procs += nodes
        codes = [p.wait(timeout=RUN_TIMEOUT_S) for p in (server, *nodes, submit)]
    finally:
        stop(procs)
        flower.stop()

    # Assert: both runs ended, Flower's ServerApp saved its final model
    logs = [ours / "fedhive-server.log", *(ours / f"site-{i}.log" for i in range(NODES))]
    assert codes == [0] * (NODES + 2), [tail(log) for log in logs] + [flower.log_tail()]
    assert final_model.exists(), flower.log_tail()
    theirs = {n: t.numpy() for n, t in torch.load(final_model).items()}
    mine = load_file(str(ours / "run" / "models" / f"round-{ROUNDS:04d}.safetensors"))

    # the same global model after three rounds of FedAvg, to float32 rounding
    assert sorted(mine) == sorted(theirs)
    worst = max(float(np.max(np.abs(mine[n] - theirs[n]))) for n in theirs)
    assert worst < MODEL_TOLERANCE, worst

    # the same aggregated train metrics each round (FedAvg's example-weighted means)
    flower_train = flower_metrics(final_model)["train"]
    rounds = [e for e in fedhive_events(ours / "run") if e["event"] == "round"]
    assert [e["round"] for e in rounds] == list(range(1, ROUNDS + 1))
    for event in rounds:
        expected = flower_train[event["round"]]
        assert set(event["train"]) == set(expected) == {"train_loss", "rounds-trained",
                                                        "server-round"}  # fmt: skip
        for key, value in expected.items():
            assert math.isclose(event["train"][key], value, rel_tol=METRIC_TOLERANCE), key
