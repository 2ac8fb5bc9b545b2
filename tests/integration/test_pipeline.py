"""User stages in the node's update pipeline: README's example, run as written, in a plain and
in a SecAgg+ run (a node whose update is too large declines; the others' round commits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.harness import start_coordinator, start_node, wait_all

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## The update pipeline: your own stages"
NODES = 3  # the constant task's delta is 1 + seed per value: norms 31.6, 63.2, 94.9 (> 80)


def readme_example(tmp_path: Path) -> Path:
    """The README's stage module and node config, written to ``tmp_path``; the config's path."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    code = re.search(r"```python\n(# mystages\.py.*?)```", section, re.S)
    toml = re.search(r"```toml\n(# node\.toml.*?)```", section, re.S)
    assert code is not None and toml is not None, "the README's pipeline example is missing"
    (tmp_path / "mystages.py").write_text(code.group(1), encoding="utf-8")
    (tmp_path / "node.toml").write_text(toml.group(1), encoding="utf-8")
    return tmp_path / "node.toml"


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
