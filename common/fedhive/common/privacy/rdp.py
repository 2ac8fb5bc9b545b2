"""The project's one accountant: Renyi DP of the subsampled Gaussian mechanism (Opacus's analysis),
used by every level (DP-SGD at the sites, central and distributed DP on the coordinator).

A history is a sequence of ``(noise_multiplier, sample_rate, steps)`` entries: ``steps`` steps
(of DP-SGD; or rounds, for node-level DP), each on a Poisson sample of the records (or nodes) with
probability ``sample_rate``, with Gaussian noise of standard deviation ``noise_multiplier`` times
the sensitivity. Renyi DP composes by addition (Mironov 2017); the RDP of one step at every order
of :data:`ORDERS` is :func:`step_rdp` (Mironov, Talwar, Zhang 2019), and :func:`rdp_epsilon`
converts a composed curve to epsilon at a delta at the best order (Balle et al. 2020, Opacus's
``get_privacy_spent``). Google's dp-accounting is the cross-check in the tests. Opacus is
imported when first used (the optional extra ``fedhive[dp]``).

One set of orders for every level: Opacus's ``RDPAccountant.DEFAULT_ALPHAS`` (1.1 .. 10.9, 12 ..
63) and larger ones for small epsilons (any set of orders gives a valid upper bound; more orders, a
tighter one). When the best order is the smallest or the largest of them, Opacus warns ("Optimal
order is the smallest/largest alpha"): the bound still holds, only less tight (at epsilon >> 10,
or far below 0.1); :func:`rdp_epsilon` is the one place that silences it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from fedhive.common.errors import ConfigError

ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 256, 512, 1024]
)
# the noise multiplier a target epsilon is calibrated to lies in [NOISE_MIN, NOISE_MAX]
NOISE_MIN = 0.05
NOISE_MAX = 1000.0
CALIBRATION_TOLERANCE = 0.005  # relative: the calibrated epsilon is within 0.5% under the target
EXTREME_ORDER_WARNING = "Optimal order is the"  # Opacus: the best order is an end of ORDERS

Entry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


def _opacus() -> Any:
    try:
        from opacus.accountants.analysis import rdp
    except ImportError as exc:  # pragma: no cover - the dp extra is part of the dev install
        raise ConfigError("differential privacy needs Opacus: pip install 'fedhive[dp]'") from exc
    return rdp


def check_available() -> None:
    """Load the accountant now (seconds: Opacus imports much); ConfigError without it."""
    _opacus()


@lru_cache(maxsize=4096)
def _curve(sigma: float, q: float) -> np.ndarray:
    curve = np.asarray(
        _opacus().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS)),
        dtype=np.float64,
    )
    curve.setflags(write=False)  # shared by every caller of the cache
    return curve


def step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP at :data:`ORDERS` of one step (a step's RDP is linear in the number of steps)."""
    return _curve(float(noise_multiplier), float(sample_rate))


def zero_rdp() -> np.ndarray:
    """The RDP of no step: the curve an accountant starts from."""
    return np.zeros(len(ORDERS), dtype=np.float64)


def rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    """Epsilon at ``delta`` of a composed RDP curve at :data:`ORDERS` (0 for no step)."""
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():  # an extreme best order: the bound holds, a little loose
        warnings.filterwarnings("ignore", message=EXTREME_ORDER_WARNING)
        eps, _ = _opacus().get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def history_rdp(history: Sequence[Entry]) -> np.ndarray:
    """The composed RDP curve of a history."""
    steps_of: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        if steps > 0:
            key = (float(sigma), float(q))
            steps_of[key] = steps_of.get(key, 0) + int(steps)
    total = zero_rdp()
    for (sigma, q), n in steps_of.items():
        total += n * step_rdp(sigma, q)
    return total


def epsilon(history: Sequence[Entry], delta: float) -> float:
    """The epsilon (at ``delta``) of the composed history; 0 for an empty one."""
    return rdp_epsilon(history_rdp(history), delta)


def noise_for_epsilon(
    target: float, delta: float, sample_rate: float, steps: int, prior: Sequence[Entry] = ()
) -> float:
    """The smallest noise multiplier (to the tolerance) whose ``steps`` steps at ``sample_rate``,
    after ``prior``, spend at most ``target`` at ``delta``; ConfigError if none up to NOISE_MAX.
    """
    if not (math.isfinite(target) and target > 0):
        raise ConfigError(f"target epsilon must be a positive number, got {target!r}")
    base = history_rdp(prior)

    def eps(sigma: float) -> float:
        return rdp_epsilon(base + steps * step_rdp(sigma, sample_rate), delta)

    low = high = 1.0  # bracket: eps(low) > target >= eps(high)
    if eps(high) > target:
        while eps(high) > target:
            low, high = high, high * 2
            if high > NOISE_MAX:
                raise ConfigError(
                    f"no noise multiplier up to {NOISE_MAX} reaches epsilon {target} at delta "
                    f"{delta} over {steps} steps at sample rate {sample_rate:.4g}"
                )
    else:
        while eps(low) <= target:
            if low <= NOISE_MIN:
                return NOISE_MIN
            low, high = max(low / 2, NOISE_MIN), low
    while high - low > CALIBRATION_TOLERANCE * low:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high
