"""Distributed DP inside SecAgg+: calibration, field overflow, clipping, noise and accounting."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from fedhive.common.api.hooks import Block, blocks_of, gather, run
from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.common.privacy import rdp
from fedhive.common.privacy.discrete_gaussian import SecureBits
from fedhive.common.privacy.distributed import (
    ClipDeltaStage,
    DistributedDPSettings,
    NoiseStage,
    decode,
    plan,
    round_privacy,
    share_refusal,
)
from fedhive.common.secagg.quantize import MODULUS
from fedhive.common.secagg.stages import QuantizeStage

Z = 3.9  # two-sided normal quantile: each statistical check fails wrongly with p <= 1e-4
SETTINGS = DistributedDPSettings(noise_multiplier=1.0, clip=2.0, bits=16)


def reference_epsilon(rounds: list[tuple[float, float]], delta: float) -> float:
    """Google's dp-accounting, the cross-check."""
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(rdp.ORDERS))
    for (q, z), count in Counter(rounds).items():
        acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), count)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(
    ("q", "z", "steps"), [(1.0, 1.0, 10), (0.5, 1.1, 50), (0.1, 0.8, 200), (1.0, 4.0, 3)]
)
def test_the_accountant_matches_dp_accounting(q: float, z: float, steps: int) -> None:
    # Prepare / Execute
    ours = rdp.epsilon([(z, q, steps)], 1e-5)
    ref = reference_epsilon([(q, z)] * steps, 1e-5)

    # Assert: the same RDP bound (the two libraries convert RDP to epsilon alike up to 1%)
    assert ours == pytest.approx(ref, rel=0.01)


def test_fewer_survivors_deliver_less_noise_and_more_epsilon() -> None:
    # Prepare: 4 nodes selected out of 4 alive
    p = plan(SETTINGS, 4, 1000)

    # Execute
    full = round_privacy(p, 4, 4, [], 1e-5)
    short = round_privacy(p, 3, 4, [], 1e-5)

    # Assert: the survivors' noise is what counts, never more privacy than delivered
    assert full["noise_multiplier"] >= SETTINGS.noise_multiplier
    assert full["noise_multiplier"] < SETTINGS.noise_multiplier * 1.001
    assert short["noise_multiplier"] == pytest.approx(full["noise_multiplier"] * math.sqrt(3 / 4))
    assert short["epsilon"] > full["epsilon"]
    assert short["survivors"] == 3 and full["selected"] == 4


def test_the_accountant_continues_from_the_committed_records() -> None:
    # Prepare: three rounds, as a resumed coordinator reads them back from its store
    p = plan(SETTINGS, 4, 1000)
    history: list[dict] = []
    for survivors in (4, 3, 4):
        history.append({"privacy": {"distributed": round_privacy(p, survivors, 8, history, 1e-5)}})

    # Execute: the fourth round after a restart, from the stored records alone
    fourth = round_privacy(p, 4, 8, [dict(e) for e in history], 1e-5)

    # Assert: epsilon grows and equals the accountant over all four rounds
    eps = [e["privacy"]["distributed"]["epsilon"] for e in history] + [fourth["epsilon"]]
    assert eps == sorted(eps) and len(set(eps)) == 4
    rounds = [(0.5, p.delivered(s)) for s in (4, 3, 4, 4)]
    assert fourth["epsilon"] == pytest.approx(reference_epsilon(rounds, 1e-5), rel=0.01)


def test_settings_that_overflow_the_field_are_refused_naming_them() -> None:
    # Prepare: 30-bit grid for 4 nodes cannot leave room for noise below 2^32
    settings = DistributedDPSettings(noise_multiplier=1.0, clip=1.0, bits=30)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"dp\.distributed\.bits.*noise_multiplier"):
        plan(settings, 4, 100)
    with pytest.raises(ValueError, match="overflow the secure-aggregation field"):
        ServerConfig(
            secure_aggregation="secagg+",
            min_nodes=4,
            insecure=True,
            dp={"distributed": {"noise_multiplier": 1.0, "clip": 1.0, "bits": 30}},
        )


def test_distributed_dp_without_secure_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="needs secure_aggregation = 'secagg\\+'"):
        ServerConfig(insecure=True, dp={"distributed": {"noise_multiplier": 1.0, "clip": 1.0}})


def test_a_misspelled_dp_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplyer"):
        ServerConfig(
            secure_aggregation="secagg+",
            insecure=True,
            dp={"distributed": {"noise_multiplyer": 1.0, "clip": 1.0}},
        )


def test_clipped_deltas_never_exceed_the_bound() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 100.0):
        # Prepare: a delta in several blocks
        delta = rng.normal(size=5000) * scale
        stage = ClipDeltaStage(2.0)

        # Execute
        out = gather(run([stage], blocks_of(delta, 777)), delta.size, np.float64)

        # Assert: within the bound; an update inside it is left alone
        assert np.linalg.norm(out) <= 2.0 * (1 + 1e-12)
        if np.linalg.norm(delta) <= 2.0:
            np.testing.assert_array_equal(out, delta)


def test_the_noise_on_a_zero_update_has_the_calibrated_spread() -> None:
    # Prepare: 4 nodes, each quantizes a zero delta and adds its share (word 0 is the count)
    d, nodes = 20_000, 4
    p = plan(SETTINGS, nodes, d)
    rng = np.random.default_rng(1)
    total = np.zeros(d + 1, dtype=np.uint32)
    for k in range(nodes):
        stages = [
            ClipDeltaStage(SETTINGS.clip),
            QuantizeStage(p.quant, 1, rng),
            NoiseStage(p.node_variance, SecureBits.for_tests(k)),
        ]
        total += gather(run(stages, blocks_of(np.zeros(d), 4096)), d + 1, np.uint32)

    # Execute: the coordinator's reading of the unmasked sum
    assert int(total[0]) == nodes
    mean = decode(total[1:], nodes, p)

    # Assert: std of the noise on the mean = sqrt(n s) step / n (rounding adds < step^2 / 4
    # per node, far below it); the sample std is within 3.9 standard errors
    sigma = math.sqrt(nodes * p.node_variance) * p.quant.step / nodes
    rounding = math.sqrt(nodes / 4) * p.quant.step / nodes
    assert abs(mean.mean()) < Z * math.hypot(sigma, rounding) / math.sqrt(d)
    spread = float(np.sqrt(np.mean(mean**2)))
    assert sigma * (1 - Z * math.sqrt(1 / (2 * d))) <= spread
    assert spread <= math.hypot(sigma, rounding) * (1 + Z * math.sqrt(1 / (2 * d)))


def test_a_noised_sum_below_zero_is_read_back_in_the_window() -> None:
    # Prepare: 3 survivors, words that wrapped below zero (noise beyond the offset)
    p = plan(SETTINGS, 3, 10)
    words = np.array([(MODULUS - 5) % MODULUS, 7], dtype=np.uint32)

    # Execute
    mean = decode(words, 3, p)

    # Assert
    np.testing.assert_allclose(mean, [-5 * p.quant.step / 3 - 2.0, 7 * p.quant.step / 3 - 2.0])


def test_noise_leaves_the_count_word_alone() -> None:
    stage = NoiseStage(100, SecureBits.for_tests(3))
    out = list(stage.transform([Block(0, np.array([1, 5, 5], dtype=np.uint32))]))
    assert int(out[0].values[0]) == 1


def test_expected_dropout_calibrates_the_noise_for_the_survivors() -> None:
    # Prepare: 4 selected, a quarter expected to drop: each node's share is sized for 3
    settings = DistributedDPSettings(noise_multiplier=1.0, clip=2.0, expected_dropout=0.25)

    # Execute
    p = plan(settings, 4, 1000)

    # Assert: 3 survivors deliver the target; all 4 deliver more
    assert p.expected == 3
    assert settings.noise_multiplier <= p.delivered(3) < settings.noise_multiplier * 1.001
    assert p.delivered(4) == pytest.approx(p.delivered(3) * math.sqrt(4 / 3))


def test_a_node_checks_the_noise_share_against_the_settings_and_its_own_floor() -> None:
    # Prepare: the calibrated share for 3 selected nodes of a 1000-element model
    honest = plan(SETTINGS, 3, 1000).node_variance
    args = {"clip": SETTINGS.clip, "bits": SETTINGS.bits, "selected": 3, "threshold": 2}

    def refusal(variance: int, floor: float | None = None, **kw: int) -> str | None:
        return share_refusal(variance, SETTINGS, **{**args, **kw}, elements=1000, floor=floor)

    # Execute / Assert: the honest share passes; less is refused, naming the settings
    assert refusal(honest) is None
    assert "that its own settings imply" in str(refusal(honest - 1))
    assert "that its own settings imply" in str(refusal(honest, selected=2))  # more per node
    # the floor is checked at the threshold's survivors: z = sqrt(2/3) ~ 0.816 there
    assert refusal(honest, floor=0.8) is None
    assert "dp_min_noise_multiplier = 0.9" in str(refusal(honest, floor=0.9))
    # without the stated settings the floor still holds
    assert share_refusal(honest, None, **args, elements=1000, floor=0.9) is not None
