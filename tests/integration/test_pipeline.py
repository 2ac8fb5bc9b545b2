"""User stages in the update pipeline: README's example, run as written, on the nodes in a
plain and in a SecAgg+ run (a node whose update is too large declines; the others' round
commits) and on the coordinator (it refuses that update); the coordinator's aggregate stages in
a plain and a SecAgg+ run; a failing user stage refuses an update or fails a round, naming it."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.integration import coord_stages
from tests.integration.harness import start_coordinator, start_node, wait_all

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## The update pipeline: your own stages"
NODES = 3  # the constant task's delta is 1 + seed per value: norms 31.6, 63.2, 94.9 (> 80)
HALF = "tests.integration.coord_stages:Half"


def readme_example(tmp_path: Path) -> Path:
    """The README's stage module and node config, written to ``tmp_path``; the config's path."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    code = re.search(r"```python\n(# mystages\.py.*?)```", section, re.S)
    toml = re.search(r"```toml\n(# node\.toml.*?)```", section, re.S)
    server = re.search(r"```toml\n(# server\.toml.*?)```", section, re.S)
    assert code and toml and server, "the README's pipeline example is missing"
    (tmp_path / "mystages.py").write_text(code.group(1), encoding="utf-8")
    (tmp_path / "node.toml").write_text(toml.group(1), encoding="utf-8")
    (tmp_path / "server.toml").write_text(server.group(1), encoding="utf-8")
    return tmp_path / "node.toml"


def start_nodes(address: str, tmp_path: Path, config: Path | None = None) -> list[Any]:
    return [
        start_node(address, f"n{i}", seed=i, log=tmp_path / f"n{i}.log", config=config)
        for i in range(NODES)
    ]


def committed_model(tmp_path: Path, round_: int = 1) -> dict[str, np.ndarray]:
    return load_file(str(tmp_path / "run" / "models" / f"round-{round_:04d}.safetensors"))


def by_node(names: Any) -> dict[str, Any]:
    """Node ids (name-suffix) -> name, for a record's ``refused`` (a dict) or ``reported``."""
    if isinstance(names, dict):
        return {u.split("-")[0]: why for u, why in names.items()}
    return {u.split("-")[0]: u for u in names}


def mean_delta(seeds: list[int]) -> float:
    """The constant task's example-weighted mean delta over nodes ``seeds``: 1 + s, 100 + s."""
    return sum((100 + s) * (1 + s) for s in seeds) / sum(100 + s for s in seeds)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg+"])
def test_the_readme_stage_refuses_a_large_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secure: bool
) -> None:
    # Prepare: the README's stage on every node; n2's update is above its bound
    config = readme_example(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    extra = {"secure_aggregation": "secagg+", "secagg_clip": 32.0} if secure else {}
    coord = start_coordinator(
        tmp_path, rounds=1, min_nodes=NODES, min_updates=2, round_timeout_s=30.0, **extra
    )
    procs = [
        start_node(coord.address, f"n{i}", seed=i, log=tmp_path / f"n{i}.log", config=config)
        for i in range(NODES)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: the round commits without n2, which declined naming the bound
    logs = [(tmp_path / f"n{i}.log").read_text() for i in range(NODES)]
    assert codes == [0] * NODES, logs
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["committed"] for e in rounds] == [True], rounds
    for e in rounds:
        refused = {u.split("-")[0]: why for u, why in e["refused"].items()}
        assert set(refused) == {"n2"}, e
        assert "update norm 94.9 exceeds 80.0" in refused["n2"]
        assert sorted(u.split("-")[0] for u in e["reported"]) == ["n0", "n1"]


def test_the_readme_stage_refuses_a_large_update_on_the_coordinator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the README's stage as the coordinator's update stage (its server.toml block),
    # and an aggregate stage that halves the round's step; the nodes have no stage of their own
    readme_example(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mystages", raising=False)
    pipeline = tomllib.loads((tmp_path / "server.toml").read_text())["pipeline"]
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=NODES,
        min_updates=2,
        round_timeout_s=30.0,
        pipeline={**pipeline, "aggregate": [HALF]},
    )
    procs = start_nodes(coord.address, tmp_path)

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: the coordinator refused n2's update with the stage's message; the round committed
    # with n0 and n1, and its model moved by half their mean delta
    assert codes == [0] * NODES
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["committed"] for e in rounds] == [True], rounds
    refused = by_node(rounds[0]["refused"])
    assert set(refused) == {"n2"}, rounds[0]
    assert "'mystages:RefuseLargeNorm' refused the update" in refused["n2"]
    assert "update norm 94.9 exceeds 80.0" in refused["n2"]
    assert sorted(by_node(rounds[0]["reported"])) == ["n0", "n1"]
    model = committed_model(tmp_path)
    for k in range(3):
        w = model[f"weights.{k}"]
        assert np.allclose(w, k + 0.5 * mean_delta([0, 1]), rtol=0, atol=1e-6), (k, w[:3])


def test_an_aggregate_stage_composes_with_secagg(tmp_path: Path) -> None:
    # Prepare: SecAgg+ (the coordinator sees only the unmasked mean) and the halving stage
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=NODES,
        round_timeout_s=30.0,
        secure_aggregation="secagg+",
        secagg_clip=32.0,
        pipeline={"aggregate": [HALF]},
    )
    procs = start_nodes(coord.address, tmp_path)

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: the committed model is global + half the mean delta (to SecAgg+'s quantization)
    assert codes == [0] * NODES
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["committed"] for e in rounds] == [True], rounds
    model = committed_model(tmp_path)
    step = 2 * 32.0 / (2**16 - 1)  # the quantization grid
    for k in range(3):
        w = model[f"weights.{k}"]
        assert np.allclose(w, k + 0.5 * mean_delta([0, 1, 2]), rtol=0, atol=step), (k, w[:3])


def test_failing_user_stages_refuse_the_update_or_fail_the_round_naming_them(
    tmp_path: Path,
) -> None:
    # Prepare: a buggy update stage (divides by zero on n2's update) and an aggregate stage that
    # raises on the first round's result; FedAvgM keeps a step count, one retry
    coord_stages.FailOnce.calls = 0
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=NODES,
        min_updates=2,
        round_timeout_s=30.0,
        strategy="fedavgm",
        strategy_args={"server_momentum": 0.5},
        max_round_retries=1,
        pipeline={
            "update": ["tests.integration.coord_stages:CrashOnLarge"],
            "aggregate": ["tests.integration.coord_stages:FailOnce"],
        },
    )
    procs = start_nodes(coord.address, tmp_path)

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: n2's update refused in each attempt, naming the stage; the first attempt failed
    # naming the aggregate stage and left the model and the strategy as they were: the retry
    # committed round 0's model plus n0's and n1's mean delta, one server step
    assert codes == [0] * NODES
    rounds = [e for e in history if e["event"] == "round"]
    assert [(e["attempt"], e["committed"]) for e in rounds] == [(0, False), (1, True)], rounds
    for e in rounds:
        refused = by_node(e["refused"])
        assert set(refused) == {"n2"}, e
        assert "'tests.integration.coord_stages:CrashOnLarge' failed" in refused["n2"]
        assert "ZeroDivisionError" in refused["n2"]
    reason = rounds[0]["reason"]
    assert "pipeline stage 'tests.integration.coord_stages:FailOnce' failed" in reason, reason
    assert "fail-once: the first aggregate" in reason
    with sqlite3.connect(tmp_path / "run" / "run.sqlite") as db:
        row = db.execute("SELECT state FROM strategy_state WHERE round = 1").fetchone()
    assert json.loads(row[0])["steps"] == 1
    model = committed_model(tmp_path)
    for k in range(3):
        w = model[f"weights.{k}"]
        assert np.allclose(w, k + mean_delta([0, 1]), rtol=0, atol=1e-6), (k, w[:3])
