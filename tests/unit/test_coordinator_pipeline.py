"""The coordinator's ``[pipeline]``: checked at start with clear refusals, and what its update
and aggregate stages do around a strategy (fedhive.server.pipeline)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhive.common.api.hooks import Block
from fedhive.common.api.pipeline import load_stages
from fedhive.common.config import ServerConfig, build_config
from fedhive.common.errors import ConfigError, InvalidUpdateError
from fedhive.common.privacy.central import CentralDPSettings
from fedhive.common.wire.tensors import TensorSpec, from_float, raw_view
from fedhive.server.aggregation import StrategyHost
from fedhive.server.app import check_strategy, prepare_run
from fedhive.server.cli import server_main
from fedhive.server.pipeline import CoordinatorStages
from fedhive.server.privacy.budget import RunPrivacy
from fedhive.server.privacy.central import CentralDP
from fedhive.server.privacy.noise import GaussianNoise
from fedhive.server.service.settings import check_settings, compose
from fedhive.server.strategy.fedavg import FedAvg

TASK = "fedhive.common.tasks.constant:make_task"
HERE = "tests.unit.test_coordinator_pipeline"
SPECS = [TensorSpec("a", "float32", (3,)), TensorSpec("b", "float32", (2,))]


class Double:
    name = "double"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, b.values * 2)


class Same:
    name = "same"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield from blocks


class Infinite:
    name = "infinite"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, b.values * np.inf)


class Short:
    name = "short"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield next(iter(blocks))


class Words:
    name = "words"
    domain = "words"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield from blocks


class NotAStage:
    name = "no transform"


class NoNoise(GaussianNoise):
    """Zero noise: isolates the clip (a test double; never in a run)."""

    def standard_normal(self, n: int) -> np.ndarray:
        return np.zeros(n)


class Update:
    """A staged update of flat float32 arrays, one per spec."""

    def __init__(self, arrays: Sequence[np.ndarray], num_examples: int = 1) -> None:
        self.arrays = [np.asarray(a, np.float32) for a in arrays]
        self.num_examples = num_examples

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        yield raw_view(self.arrays[tensor])


class Raw:
    """A staged update of raw arrays (each spec's storage dtype), in pieces of 2 elements."""

    def __init__(self, arrays: Sequence[np.ndarray], num_examples: int) -> None:
        self.arrays = arrays
        self.num_examples = num_examples

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        data = self.arrays[tensor]
        for lo in range(0, data.size, 2):
            yield raw_view(data[lo : lo + 2])


def config(**pipeline: Any) -> ServerConfig:
    return ServerConfig(insecure=True, task=TASK, pipeline=pipeline)


def wrapped(update: Sequence[str] = (), aggregate: Sequence[str] = ()) -> CoordinatorStages:
    aggregator = check_strategy(config(update=list(update), aggregate=list(aggregate)))
    assert isinstance(aggregator, CoordinatorStages)
    return aggregator


GLOBAL = [np.array([1.0, 2.0, 3.0], np.float32), np.array([4.0, 5.0], np.float32)]


def test_update_stages_with_secagg_are_refused_at_validation(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "server.toml"
    path.write_text(
        f'secure_aggregation = "secagg+"\ninsecure = true\n[pipeline]\nupdate = ["{HERE}:Double"]\n'
    )

    # Execute / Assert: refused naming both settings and where the stage may go instead
    with pytest.raises(ConfigError) as info:
        build_config(ServerConfig, path)
    message = str(info.value)
    assert "[pipeline] update" in message and "secure_aggregation = 'secagg+'" in message
    assert "[pipeline] node" in message and "[pipeline] aggregate" in message
    # aggregate stages compose with SecAgg+; a misspelled key is refused as any other
    ok = ServerConfig(insecure=True, secure_aggregation="secagg+", pipeline={"aggregate": ["m:S"]})
    assert ok.pipeline is not None and ok.pipeline.aggregate == ("m:S",)
    with pytest.raises(ConfigError, match=r"pipeline\.updates: unknown setting"):
        build_config(ServerConfig, overrides={"insecure": True, "pipeline": {"updates": []}})


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("nosuchmodule_xyz:Stage", "cannot import pipeline stage module 'nosuchmodule_xyz'"),
        (f"{HERE}:Missing", "no such class or factory"),
        (f"{HERE}:NotAStage", "is not a stage"),
        (f"{HERE}:Words", "the coordinator's stages see float deltas only"),
    ],
    ids=["unimportable", "missing", "not-a-stage", "words"],
)
def test_a_stage_that_cannot_run_on_the_coordinator_is_refused_at_start(
    path: str, problem: str
) -> None:
    for key in ("update", "aggregate"):
        with pytest.raises(ConfigError, match=problem):
            check_strategy(config(**{key: [path]}))


def test_the_cli_exits_2_before_the_run_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    run_dir = tmp_path / "run"
    path = tmp_path / "server.toml"
    path.write_text(
        f'insecure = true\ntask = "{TASK}"\nrun_dir = "{run_dir}"\nprogress = false\n'
        '[task_args]\nparams = 10\n[pipeline]\naggregate = ["nosuchmodule_xyz:Stage"]\n'
    )

    # Execute
    try:
        code = server_main(["--config", str(path)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    # Assert
    assert code == 2
    assert "cannot import pipeline stage module 'nosuchmodule_xyz'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_submitted_run_keeps_its_pipeline_and_cannot_start_without_its_stages(
    tmp_path: Path,
) -> None:
    # Prepare: the service's check of a submission, then the run's start (prepare_run)
    base = ServerConfig(insecure=True)
    settings = {"task": TASK, "pipeline": {"aggregate": ["nosuchmodule_xyz:Stage"]}}

    # Execute
    checked = check_settings(base, settings)
    run = compose(base, checked, tmp_path / "run")

    # Assert: it passes the settings' validation as written; its start is refused, naming it
    assert checked["pipeline"] == {"update": [], "aggregate": ["nosuchmodule_xyz:Stage"]}
    with pytest.raises(ConfigError, match="cannot import pipeline stage module"):
        prepare_run(run)
    assert not (tmp_path / "run").exists()


def test_without_stages_the_aggregator_is_not_wrapped() -> None:
    assert type(check_strategy(config())) is FedAvg
    assert type(check_strategy(ServerConfig(insecure=True, task=TASK))) is FedAvg


def test_update_stages_transform_each_update_before_the_fold() -> None:
    # Prepare: the delta is doubled before FedAvg folds global + delta
    aggregator = wrapped(update=[f"{HERE}:Double"])
    aggregator.begin(SPECS, GLOBAL)

    # Execute
    aggregator.fold(Update([g + 1 for g in GLOBAL], num_examples=1))
    aggregator.fold(Update([g + 3 for g in GLOBAL], num_examples=3))
    new = aggregator.finalize()

    # Assert: global + 2 x (1 x 1 + 3 x 3) / 4 = global + 5
    for g, n in zip(GLOBAL, new, strict=True):
        assert np.array_equal(n.view(np.float32), g + 5)


@pytest.mark.parametrize(
    ("stage", "problem"),
    [("Infinite", "non-finite values"), ("Short", "stream ended at 3 of 5")],
)
def test_an_update_a_stage_spoils_is_refused_naming_it_and_nothing_is_folded(
    stage: str, problem: str
) -> None:
    aggregator = wrapped(update=[f"{HERE}:{stage}"])
    aggregator.begin(SPECS, GLOBAL)

    with pytest.raises(InvalidUpdateError, match=f"pipeline stage '{HERE}:{stage}' failed"):
        aggregator.fold(Update([g + 1 for g in GLOBAL]))
    with pytest.raises(InvalidUpdateError, match=problem):
        aggregator.fold(Update([g + 1 for g in GLOBAL]))
    assert aggregator.inner.updates == 0  # type: ignore[attr-defined]


def test_aggregate_stages_change_the_round_result_and_a_failure_is_the_rounds_reason(
    tmp_path: Path,
) -> None:
    # Prepare
    good = wrapped(aggregate=[f"{HERE}:Double"])
    bad = StrategyHost(wrapped(aggregate=[f"{HERE}:Short"]), tmp_path)
    good.begin(SPECS, GLOBAL)
    bad.aggregator.begin(SPECS, GLOBAL)
    for agg in (good, bad.aggregator):
        agg.fold(Update([g + 1 for g in GLOBAL]))

    # Execute
    new = good.finalize()
    arrays, reason = bad.finalize()

    # Assert: global + 2 x 1; the failing stage's own reason, no model
    for g, n in zip(GLOBAL, new, strict=True):
        assert np.array_equal(n.view(np.float32), g + 2)
    assert arrays == []
    assert reason.startswith(f"pipeline stage '{HERE}:Short' failed on the round's aggregate")


def test_update_stages_run_before_central_dps_clip_which_they_cannot_undo() -> None:
    # Prepare: the doubling stage around central DP (clip 1, no noise: a test double), one node
    dp = CentralDP(FedAvg(), CentralDPSettings(noise_multiplier=1.0, clip=1.0), NoNoise())
    aggregator = CoordinatorStages(dp, load_stages([f"{HERE}:Double"], coordinator=True), [])
    cfg = ServerConfig.model_validate(
        {"insecure": True, "dp": {"delta": 1e-5, "central": {"noise_multiplier": 1.0, "clip": 1.0}}}
    )

    # Execute: a small delta (norm 0.22, doubled 0.45) and a large one (2.2, doubled 4.5)
    moved = []
    for step in (0.1, 1.0):
        aggregator.begin(SPECS, GLOBAL)
        dp.expect(1)
        aggregator.fold(Update([g + step for g in GLOBAL]))
        new = aggregator.finalize()
        pairs = zip(new, GLOBAL, strict=True)
        moved.append(math.sqrt(sum(float(np.sum((n.view(np.float32) - g) ** 2)) for n, g in pairs)))

    # Assert: doubled, then clipped to 1; the run's accountant finds central DP under the stages
    assert moved == pytest.approx([2 * 0.1 * math.sqrt(5), 1.0], rel=1e-5)
    assert RunPrivacy.for_run(cfg, aggregator, []).central is dp


def test_an_identity_stage_folds_every_dtype_bit_exactly_as_without_stages() -> None:
    # Prepare: bf16, int64 and float64 tensors; FedAvg with and without a stage that returns the
    # delta it was given
    specs = [
        TensorSpec("h", "bfloat16", (4,)),
        TensorSpec("i", "int64", (3,)),
        TensorSpec("d", "float64", (2,)),
    ]
    current = [
        from_float(np.array([0.5, -1.25, 3.0, 100.0], np.float32), "bfloat16"),
        np.array([1, -2, 7], np.int64),
        np.array([0.1, -0.2], np.float64),
    ]
    bf16 = [
        from_float(np.array(v, np.float32), "bfloat16")
        for v in ([0.75, -1.0, 2.5, 96.0], [1.5, -2.0, 3.5, 104.0])
    ]
    updates = [
        [bf16[0], np.array([2, -3, 9], np.int64), np.array([0.3, 0.25], np.float64)],
        [bf16[1], np.array([4, 0, 7], np.int64), np.array([-0.1, 1e-3], np.float64)],
    ]
    plain = FedAvg()
    staged = CoordinatorStages(FedAvg(), load_stages([f"{HERE}:Same"], coordinator=True), [])

    # Execute
    results = []
    for aggregator in (plain, staged):
        aggregator.begin(specs, current)
        for n, arrays in enumerate(updates, start=1):
            aggregator.fold(Raw(arrays, n))
        results.append(aggregator.finalize())

    # Assert
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_a_robust_rule_sees_the_transformed_updates(tmp_path: Path) -> None:
    # Prepare: the coordinatewise median over three updates, each delta doubled first
    cfg = ServerConfig(
        insecure=True,
        task=TASK,
        run_dir=tmp_path / "run",
        strategy="fedmedian",
        pipeline={"update": [f"{HERE}:Double"]},
    )
    aggregator = check_strategy(cfg)
    aggregator.begin(SPECS, GLOBAL)

    # Execute
    for step in (1.0, 2.0, 30.0):
        aggregator.fold(Update([g + step for g in GLOBAL]))
    new = aggregator.finalize()

    # Assert: global + median(2, 4, 60)
    for g, n in zip(GLOBAL, new, strict=True):
        assert np.allclose(np.asarray(n, np.float32).reshape(-1), g + 4)
