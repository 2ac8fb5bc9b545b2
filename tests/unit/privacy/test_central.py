"""Central DP's mechanism: clipping bound, fixed-weight mean, noise calibration, adaptive clip,
composition with a server optimizer. Fixed seeds (test keys) throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedhive.common.errors import AggregationError
from fedhive.common.privacy.central import CentralDPSettings
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.privacy.central import CentralDP
from fedhive.server.privacy.noise import GaussianNoise
from fedhive.server.strategy.fedadam import FedAdam
from fedhive.server.strategy.fedavg import FedAvg
from fedhive.server.strategy.fedopt import ServerOptimizing

SPECS = [TensorSpec("w", "float32", (20, 30)), TensorSpec("b", "float64", (7,))]
FALSE_FAILURE = 1e-6  # two-sided level of each statistical check: a correct sampler fails it
# once in a million seeds (the seed is fixed, so the test is deterministic; this says how
# unlucky a seed would have to be)


class Update:
    def __init__(self, arrays: list[np.ndarray], n: int = 1) -> None:
        self.arrays, self.num_examples = arrays, n

    def pieces(self, tensor: int):  # type: ignore[no-untyped-def]
        raw = np.ascontiguousarray(self.arrays[tensor]).tobytes()
        cut = len(raw) // 16 * 8  # two pieces, on a word boundary of both dtypes
        yield memoryview(raw[:cut])
        yield memoryview(raw[cut:])


class NoNoise(GaussianNoise):
    """Zero noise: isolates the clipping and the mean (a test double; never in a run)."""

    def standard_normal(self, n: int) -> np.ndarray:
        return np.zeros(n)


def model(rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    return [
        (scale * rng.standard_normal(s.numel)).astype(np.float32 if s.dtype == "float32" else None)
        for s in SPECS
    ]


def delta_norm(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    pairs = zip(a, b, strict=True)
    return math.sqrt(sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in pairs))


def run_round(dp: CentralDP, current: list[np.ndarray], updates: list[Update], m: int):  # type: ignore[no-untyped-def]
    dp.begin(SPECS, current)
    dp.expect(m)
    for u in updates:
        dp.fold(u)
    return [a.reshape(-1) for a in dp.finalize()]


def settings(**kw: object) -> CentralDPSettings:
    return CentralDPSettings.model_validate({"noise_multiplier": 1.0, "clip": 1.0, **kw})


def test_clipped_deltas_never_exceed_the_bound() -> None:
    # Prepare: 200 updates whose deltas range from far inside to far outside the clip
    rng = np.random.default_rng(0)
    clip = 0.75
    dp = CentralDP(FedAvg(), settings(clip=clip), NoNoise())
    current = model(rng)
    for i in range(200):
        scale = 10 ** rng.uniform(-3, 3)
        upd = [c + d for c, d in zip(current, model(rng, scale), strict=True)]
        raw = delta_norm(upd, current)

        # Execute: one update, m = 1, no noise: the new model is global + its clipped delta
        new = run_round(dp, current, [Update(upd)], 1)

        # Assert: the applied delta is within the bound, and untouched when already inside it
        applied = delta_norm(new, current)
        assert applied <= clip * (1 + 1e-6), (i, raw, applied)
        if raw <= clip:
            assert applied == pytest.approx(raw, rel=1e-5)
        else:
            assert applied == pytest.approx(clip, rel=1e-5)


def test_mean_is_fixed_weight_over_the_selected_nodes_not_example_weighted() -> None:
    # Prepare: two small deltas (inside the clip) with very different example counts, 3 nodes
    # selected (one never reported)
    current = [np.zeros(600, np.float32), np.zeros(7)]
    d1 = [np.full(600, 0.01, np.float32), np.full(7, 0.01)]
    d2 = [np.full(600, -0.02, np.float32), np.full(7, 0.03)]
    dp = CentralDP(FedAvg(), settings(clip=10.0), NoNoise())

    # Execute
    new = run_round(dp, current, [Update(d1, n=1000), Update(d2, n=1)], 3)

    # Assert: (d1 + d2) / 3, whatever the example counts
    assert np.allclose(new[0], (0.01 - 0.02) / 3, atol=1e-7)
    assert np.allclose(new[1], (0.01 + 0.03) / 3)


@pytest.mark.parametrize("m", [1, 4])
def test_noise_std_on_a_zero_update_matches_the_calibration(m: int) -> None:
    # Prepare: z = 1.5, C = 2: the sum's noise has std z C = 3; divided by m selected nodes
    z, clip = 1.5, 2.0
    dp = CentralDP(FedAvg(), settings(noise_multiplier=z, clip=clip), GaussianNoise.for_tests(m))
    specs_big = [TensorSpec("w", "float64", (400, 500))]
    big = [np.zeros(200_000)]

    # Execute: a zero update (global = update)
    dp.begin(specs_big, big)
    dp.expect(m)
    dp.fold(Update([np.zeros(200_000)]))
    noise = dp.finalize()[0].reshape(-1)

    # Assert: (n - 1) s^2 / sigma^2 ~ chi2(n - 1); the mean ~ N(0, sigma^2 / n); each checked at
    # FALSE_FAILURE (two-sided)
    sigma, n = z * clip / m, noise.size
    stat = (n - 1) * float(np.var(noise, ddof=1)) / sigma**2
    lo, hi = stats.chi2.ppf([FALSE_FAILURE / 2, 1 - FALSE_FAILURE / 2], n - 1)
    assert lo < stat < hi, (stat, lo, hi, float(np.std(noise)), sigma)
    bound = stats.norm.ppf(1 - FALSE_FAILURE / 2) * sigma / math.sqrt(n)
    assert abs(float(noise.mean())) < bound
    # and it is normal (Kolmogorov-Smirnov against N(0, sigma^2))
    assert stats.kstest(noise / sigma, "norm").pvalue > FALSE_FAILURE


def test_noise_source_is_keyed_fresh_per_instance_and_reproducible_only_with_a_test_key() -> None:
    assert np.array_equal(
        GaussianNoise.for_tests(1).standard_normal(10),
        GaussianNoise.for_tests(1).standard_normal(10),
    )
    assert not np.array_equal(
        GaussianNoise().standard_normal(10), GaussianNoise().standard_normal(10)
    )
    with pytest.raises(ValueError, match="32 bytes"):
        GaussianNoise(b"short")


def test_adaptive_clip_follows_the_unclipped_share() -> None:
    # Prepare: gamma = 0.5, eta = 0.2; every delta inside the clip (share 1), then outside (0)
    s = settings(adaptive=True, count_noise_std=1.0, clip=1.0)
    dp = CentralDP(FedAvg(), s, NoNoise())
    current = [np.zeros(600, np.float32), np.zeros(7)]
    small = [np.full(600, 1e-3, np.float32), np.zeros(7)]
    large = [np.full(600, 1.0, np.float32), np.zeros(7)]

    # Execute / Assert: clip * exp(-eta (share - gamma))
    run_round(dp, current, [Update(small), Update(small)], 2)
    assert dp.state()["clip"] == pytest.approx(math.exp(-0.2 * 0.5))  # committed
    before = dp.clip
    run_round(dp, current, [Update(large), Update(large)], 2)
    assert dp.state()["clip"] == pytest.approx(before * math.exp(0.2 * 0.5))
    # the accounted z covers both noises: z_delta > z (Andrew et al. 2021, Theorem 1)
    assert s.delta_noise_multiplier() == pytest.approx(1 / math.sqrt(1 - 0.25))


def test_composes_with_a_server_optimizer_and_its_state_survives() -> None:
    # Prepare: FedAdam under central DP; two rounds
    rng = np.random.default_rng(3)
    current = model(rng)
    dp = CentralDP(
        ServerOptimizing(FedAdam(eta=0.1)),
        settings(adaptive=True, count_noise_std=2.0),
        GaussianNoise.for_tests(0),
    )
    new = run_round(dp, current, [Update(model(rng)), Update(model(rng))], 2)

    # Execute: the state as committed, restored into a fresh wrapper
    state = dp.state()
    arrays = dp.state_arrays()  # delegated to FedAdam: its moments
    again = CentralDP(ServerOptimizing(FedAdam(eta=0.1)), dp.settings)
    again.restore(state)
    again.restore_arrays(arrays)

    # Assert: the optimizer stepped (from the private mean), the clip and steps carried over
    assert delta_norm(new, current) > 0
    assert state["inner"] == {"steps": 1} and again.clip == dp.clip != 1.0
    assert sorted(arrays) == sorted(again.state_arrays())
    with pytest.raises(AggregationError, match="clip"):
        again.restore({"clip": -1.0, "inner": {}})


def test_finalize_without_the_selected_count_is_refused() -> None:
    dp = CentralDP(FedAvg(), settings(), NoNoise())
    dp.begin(SPECS, model(np.random.default_rng(0)))
    dp.fold(Update(model(np.random.default_rng(1))))
    with pytest.raises(AggregationError, match="selected count"):
        dp.finalize()


def test_adaptive_clip_moves_only_when_the_round_is_committed() -> None:
    # Prepare: a finalized round whose model the engine then refuses (never committed: its
    # noised count was never released)
    s = settings(adaptive=True, count_noise_std=1.0, clip=1.0)
    dp = CentralDP(FedAvg(), s, NoNoise())
    current = [np.zeros(600, np.float32), np.zeros(7)]
    small = [np.full(600, 1e-3, np.float32), np.zeros(7)]
    run_round(dp, current, [Update(small)], 1)

    # Execute: the next attempt begins without a commit (no state() taken)
    dp.begin(SPECS, current)

    # Assert: the failed round's clip change is gone; a committed one keeps it
    assert dp.round_clip == 1.0
    run_round(dp, current, [Update(small)], 1)
    assert dp.state()["clip"] == pytest.approx(math.exp(-0.1))
    dp.begin(SPECS, current)
    assert dp.round_clip == pytest.approx(math.exp(-0.1))
