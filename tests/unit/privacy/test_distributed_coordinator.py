"""The coordinator's reading of a distributed DP round's unmasked sum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.common.api.hooks import Block
from fedhive.common.data.safetensors_io import write_safetensors
from fedhive.common.privacy.distributed import DistributedDPSettings, plan
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.privacy.distributed import finalize_distributed

SPECS = [TensorSpec("a", "float32", (3,)), TensorSpec("b", "float32", (2,))]
SETTINGS = DistributedDPSettings(noise_multiplier=1.0, clip=1.0, bits=8)


def base_model(tmp_path: Path) -> Path:
    path = tmp_path / "round-0000.safetensors"
    arrays = [np.array([1, 2, 3], np.float32), np.array([10, 20], np.float32)]
    write_safetensors(path, SPECS, [a.tobytes() for a in arrays])
    return path


def test_the_noised_mean_delta_is_added_to_the_round_s_model(tmp_path: Path) -> None:
    # Prepare: 2 survivors whose words sum to the offset (a zero mean delta) but for one value
    p = plan(SETTINGS, 2, 5)
    offset = p.quant.levels  # 2 nodes x L / 2
    words = np.array([2, offset, offset, offset + 2, offset, offset], dtype=np.uint32)

    # Execute
    out, survivors, privacy = finalize_distributed(
        p, SPECS, [Block(0, words[:2]), Block(2, words[2:])], 2, base_model(tmp_path), 4, [], 1e-5
    )

    # Assert: the base plus the mean delta; the record counts the 2 survivors
    step = p.quant.step
    np.testing.assert_allclose(out[0], [1, 2, 3 + 2 * step / 2], rtol=1e-6)
    np.testing.assert_allclose(out[1], [10, 20], rtol=1e-6)
    assert survivors == 2 and privacy["survivors"] == 2 and privacy["sample_rate"] == 0.5


def test_a_count_word_that_is_not_the_survivors_abandons_the_round(tmp_path: Path) -> None:
    # Prepare: a node claimed weight 5 (the count word says 6 for 2 survivors)
    p = plan(SETTINGS, 2, 5)
    words = np.array([6, 0, 0, 0, 0, 0], dtype=np.uint32)

    # Execute / Assert
    with pytest.raises(ValueError, match="count word says 6 node"):
        finalize_distributed(p, SPECS, [Block(0, words)], 2, base_model(tmp_path), 2, [], 1e-5)
