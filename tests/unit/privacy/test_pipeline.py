"""The node's update pipeline: user stages by import path, checked at start, composed with the
built-in DP and SecAgg+ stages where the math allows."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.client.pipeline import secure_stages
from fedhive.client.secagg import SecureTask
from fedhive.common.api.pipeline import load_stages, split
from fedhive.common.config import ClientConfig
from fedhive.common.errors import ConfigError, InvalidUpdateError
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.quantize import QuantConfig

HERE = "tests.unit.privacy.stages_fixture"


def test_stages_load_in_their_domains() -> None:
    stages = load_stages([f"{HERE}:FloatStage", f"{HERE}:WordStage"])
    assert [s.domain for s in stages] == ["float", "words"]


@pytest.mark.parametrize(
    ("paths", "match"),
    [
        ([f"{HERE}:WordStage", f"{HERE}:FloatStage"], "cannot follow quantization"),
        ([f"{HERE}:NotAStage"], "is not a stage"),
        ([f"{HERE}:OddDomain"], "domain 'complex'"),
        ([f"{HERE}:Missing"], "no such class"),
        (["no_such_module_x:Stage"], "cannot import pipeline stage module"),
        (["nocolon"], "must look like"),
    ],
)
def test_a_stage_the_math_or_the_code_does_not_allow_is_refused(
    paths: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_stages(paths)


def test_a_word_stage_needs_a_secure_round() -> None:
    stages = load_stages([f"{HERE}:WordStage"])
    with pytest.raises(ConfigError, match="does not use secure aggregation"):
        split(stages, secure=False)
    floats, words = split(stages, secure=True)
    assert floats == [] and [w.name for w in words] == ["word-pass"]


def test_the_node_config_names_its_stages() -> None:
    config = ClientConfig(insecure=True, pipeline={"node": [f"{HERE}:FloatStage"]})
    assert config.pipeline is not None and config.pipeline.node == (f"{HERE}:FloatStage",)
    with pytest.raises(ValueError, match="stage"):
        ClientConfig(insecure=True, pipeline={"stage": ["x:y"]})


def test_the_built_in_order_with_distributed_dp_and_user_stages() -> None:
    # Prepare: a secure task with distributed DP, one user stage of each domain
    graph = Graph.build(["a", "b", "c"], seed=1)
    task = SecureTask(1, graph, QuantConfig(1.0, 16, 1), dp_clip=1.0, dp_variance=20)
    floats, words = split(load_stages([f"{HERE}:FloatStage", f"{HERE}:WordStage"]), secure=True)
    pad = np.zeros(11, dtype=np.uint32)
    rng = np.random.default_rng(0)

    # Execute
    stages = secure_stages(task, pad, 1, rng, np.zeros(10), floats, words)
    plain = secure_stages(
        SecureTask(1, graph, QuantConfig(1.0, 16, 8)), pad, 5, rng, np.zeros(10), floats, []
    )

    # Assert
    assert [s.name for s in stages] == [
        "delta", "float-pass", "dp-clip", "quantize", "word-pass", "pad",
    ]  # fmt: skip
    assert [s.name for s in plain] == ["delta", "float-pass", "rebase", "quantize"]


def secure_config(**dp: object) -> dict[str, object]:
    return {
        "secagg": "secagg+",
        "secagg_round": 1,
        "secagg_nodes": '["a", "b", "c"]',
        "secagg_seed": 1,
        "secagg_degree": 2,
        "secagg_threshold": 2,
        "secagg_clip": 1.0,
        "secagg_bits": 16,
        "secagg_max_weight": 1,
        **dp,
    }


def test_a_node_reads_the_distributed_dp_parameters_and_refuses_bad_ones() -> None:
    # Prepare / Execute
    task = SecureTask.from_config(secure_config(secagg_dp_clip=1.0, secagg_dp_variance="420"))

    # Assert: read; a zero variance, a bad clip or a weighted grid is refused (the node declines)
    assert task is not None and task.dp_variance == 420 and task.dp_clip == 1.0
    for bad in (
        {"secagg_dp_clip": 1.0, "secagg_dp_variance": "0"},
        {"secagg_dp_clip": float("nan"), "secagg_dp_variance": "420"},
        {"secagg_dp_variance": "420"},
        {"secagg_dp_clip": 1.0, "secagg_dp_variance": "420", "secagg_max_weight": 8},
    ):
        with pytest.raises(InvalidUpdateError, match="secure round parameters"):
            SecureTask.from_config(secure_config(**bad))
