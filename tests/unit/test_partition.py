"""Splits (iid, dirichlet, shards) and ``fedhive partition`` on every on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedhive.common.cli.partition import main as partition_main
from fedhive.common.cli.partition import partition_dataset
from fedhive.common.data.datasets import load_labelled, read_table, write_table
from fedhive.common.data.partition import read_npz, split_indices, write_npz

LABELS = np.repeat(np.arange(5), 40)  # 200 examples, 5 classes


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_example_goes_to_exactly_one_node_and_seeds_repeat(scheme: str) -> None:
    # Execute
    parts = split_indices(LABELS, 4, scheme, alpha=0.3, shards_per_node=2, seed=7)
    again = split_indices(LABELS, 4, scheme, alpha=0.3, shards_per_node=2, seed=7)
    other = split_indices(LABELS, 4, scheme, alpha=0.3, shards_per_node=2, seed=8)

    # Assert
    assert len(parts) == 4
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_shards_give_each_node_few_classes_and_iid_gives_all() -> None:
    # Execute
    shards = split_indices(LABELS, 5, "shards", shards_per_node=1, seed=0)
    iid = split_indices(LABELS, 5, "iid", seed=0)

    # Assert: one label-sorted shard of 40 per node -> exactly one class each
    assert [len(np.unique(LABELS[p])) for p in shards] == [1, 1, 1, 1, 1]
    assert all(len(np.unique(LABELS[p])) == 5 for p in iid)


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    def skew(alpha: float) -> float:
        parts = split_indices(LABELS, 4, "dirichlet", alpha=alpha, seed=1)
        shares = [np.bincount(LABELS[p], minlength=5) / len(p) for p in parts]
        return float(np.mean([s.max() for s in shares]))

    assert skew(0.1) > skew(100.0) + 0.2


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown partition scheme"):
        split_indices(LABELS, 2, "round-robin")


def test_partition_npz_writes_node_and_server_folders(tmp_path: Path, capsys) -> None:
    # Prepare
    x = np.arange(200 * 4, dtype=np.float32).reshape(200, 2, 2)
    write_npz(tmp_path / "all.npz", x, LABELS)

    # Execute
    code = partition_main(
        [str(tmp_path / "all.npz"), str(tmp_path / "out"), "--nodes", "3", "--holdout", "0.25"]
    )

    # Assert: 150 for the nodes, 50 held out; rows of x travel with their labels
    assert code == 0
    parts = [read_npz(tmp_path / "out" / f"node-{i}" / "train.npz") for i in range(3)]
    held_x, held_y = read_npz(tmp_path / "out" / "server" / "test.npz")
    assert sum(len(y) for _, y in parts) == 150 and len(held_y) == 50
    for xs, ys in [*parts, (held_x, held_y)]:
        np.testing.assert_array_equal(LABELS[(xs[:, 0, 0] // 4).astype(int)], ys)
    out = capsys.readouterr().out
    assert "node-2" in out and "total" in out


def test_partition_image_folder_keeps_every_class_folder(tmp_path: Path) -> None:
    # Prepare: 3 classes x 4 PNGs
    src = tmp_path / "images"
    for c in ("cat", "dog", "eel"):
        (src / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (6, 6), color=i * 20).save(src / c / f"{c}{i}.png")

    # Execute: pathological shards, one class per node
    data = load_labelled(src)
    _, dirs, hist = partition_dataset(data, tmp_path / "out", 3, "shards", shards_per_node=1)

    # Assert
    assert data.class_names == ["cat", "dog", "eel"]
    for d in dirs:
        assert sorted(p.name for p in d.iterdir()) == ["cat", "dog", "eel"]
    assert sorted(hist.sum(axis=0).tolist()) == [4, 4, 4]
    assert sorted(int((row > 0).sum()) for row in hist) == [1, 1, 1]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_partition_tables_round_trip(tmp_path: Path, suffix: str) -> None:
    # Prepare
    rows = [{"text": f"message, with comma {i}", "label": ["a", "b"][i % 2]} for i in range(30)]
    write_table(tmp_path / f"all{suffix}", rows)

    # Execute
    code = partition_main(
        [str(tmp_path / f"all{suffix}"), str(tmp_path / "out"), "--nodes", "2", "--scheme", "iid"]
    )

    # Assert
    assert code == 0
    got = [read_table(tmp_path / "out" / f"node-{i}" / f"train{suffix}") for i in range(2)]
    assert sorted(r["text"] for part in got for r in part) == sorted(r["text"] for r in rows)
    assert all(r["label"] == ["a", "b"][int(r["text"].split()[-1]) % 2] for r in got[0])


def test_partition_cli_reports_bad_input(tmp_path: Path, capsys) -> None:
    # Prepare
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no label"}) + "\n")

    # Execute
    code = partition_main([str(tmp_path / "bad.jsonl"), str(tmp_path / "out"), "--nodes", "2"])

    # Assert
    assert code == 2
    assert "needs 'text' and 'label'" in capsys.readouterr().err


def test_simulate_prepares_pathological_shards_with_the_same_code(tmp_path: Path) -> None:
    # Prepare
    from fedhive.server.simulate import prepare_data

    # Execute: 5 nodes, one label-sorted shard each, from the digits task
    _, dirs = prepare_data("fedhive.common.tasks.digits:make_task", tmp_path, 5, 0.5, 0, 1)

    # Assert: a shard of label-sorted digits spans at most 3 classes
    assert len(dirs) == 5
    for d in dirs:
        assert d is not None
        _, y = read_npz(d / "train.npz")
        assert 1 <= len(np.unique(y)) <= 3


def test_simulate_refuses_shards_for_a_task_without_support(tmp_path: Path) -> None:
    from fedhive.common.errors import FedhiveError
    from fedhive.server.simulate import prepare_data

    with pytest.raises(FedhiveError, match="does not support --shards"):
        prepare_data("tests.unit.fake_prepare:make_task", tmp_path, 2, 0.5, 0, 1)
