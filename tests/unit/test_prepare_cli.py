"""`fedhive prepare`: the compose file's one-shot data step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.common.data.partition import read_npz
from fedhive.server.simulate import prepare_main


def test_partition_writes_one_folder_per_node_and_the_held_out_set(tmp_path: Path) -> None:
    # Execute
    code = prepare_main(["--out", str(tmp_path), "--nodes", "site-1,site-2", "--iid"])

    # Assert
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server", "site-1", "site-2"]
    sizes = [len(read_npz(tmp_path / n / "train.npz")[1]) for n in ("site-1", "site-2")]
    test_y = read_npz(tmp_path / "server" / "test.npz")[1]
    assert abs(sizes[0] - sizes[1]) <= 1 and sum(sizes) + len(test_y) == 1797
    assert np.unique(test_y).size == 10


@pytest.mark.parametrize("nodes", ["site-1,site-1", ","])
def test_partition_refuses_node_ids_that_are_not_distinct(
    tmp_path: Path, nodes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = prepare_main(["--out", str(tmp_path), "--nodes", nodes])

    # Assert
    assert code == 2
    assert "--nodes needs distinct ids" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prepare_labels_rows_with_the_node_ids_and_prints_the_final_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = prepare_main(["--out", str(tmp_path), "--nodes", "site-a,hospital-b", "--shards", "2"])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines()[2:4]]
    assert rows == ["site-a", "hospital-b"]
    assert "node-0" not in out and ".staging" not in out
    assert f"in {tmp_path / 'server'}" in out
    header, *table = out.splitlines()[1:4]
    assert all(len(row) == len(header) for row in table)  # the columns stay aligned
