"""The project's accountant: Rényi DP of the subsampled Gaussian mechanism (Opacus's analysis).

A history is a sequence of ``(noise_multiplier, sample_rate, steps)`` entries: ``steps`` steps of
DP-SGD, each on a Poisson sample of the records (each record in with probability
``sample_rate``), with Gaussian noise of standard deviation ``noise_multiplier * clip``. Its
epsilon at a delta is the RDP bound summed over the entries and converted at the best order
(:func:`opacus.accountants.analysis.rdp.get_privacy_spent`). Opacus is imported when first used
(the optional extra ``fedhive[dp]``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from fedhive.common.errors import ConfigError

# Opacus's RDPAccountant.DEFAULT_ALPHAS
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# the noise multiplier a target epsilon is calibrated to lies in [NOISE_MIN, NOISE_MAX]
NOISE_MIN = 0.05
NOISE_MAX = 1000.0
CALIBRATION_TOLERANCE = 0.005  # relative: the calibrated epsilon is within 0.5% under the target

Entry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


def _rdp() -> Any:
    try:
        from opacus.accountants.analysis import rdp
    except ImportError as exc:  # pragma: no cover - the dp extra is part of the dev install
        raise ConfigError("differential privacy needs Opacus: pip install 'fedhive[dp]'") from exc
    return rdp


@lru_cache(maxsize=4096)
def _curve(sigma: float, q: float) -> np.ndarray:
    """The RDP of one step at every order (a step's RDP is linear in the number of steps)."""
    return np.asarray(
        _rdp().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS)),
        dtype=np.float64,
    )


def epsilon(history: Sequence[Entry], delta: float) -> float:
    """The epsilon (at ``delta``) of the composed history; 0 for an empty one."""
    steps_of: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        if steps > 0:
            steps_of[(sigma, q)] = steps_of.get((sigma, q), 0) + steps
    if not steps_of:
        return 0.0
    total = sum(n * _curve(sigma, q) for (sigma, q), n in steps_of.items())
    with warnings.catch_warnings():  # an extreme best order: the bound holds, a little loose
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = _rdp().get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)


def noise_for_epsilon(
    target: float, delta: float, sample_rate: float, steps: int, prior: Sequence[Entry] = ()
) -> float:
    """The smallest noise multiplier (to the tolerance) whose ``steps`` steps at ``sample_rate``,
    after ``prior``, spend at most ``target`` at ``delta``; ConfigError if none up to NOISE_MAX.
    """
    if not (math.isfinite(target) and target > 0):
        raise ConfigError(f"target epsilon must be a positive number, got {target!r}")

    def eps(sigma: float) -> float:
        return epsilon([*prior, (sigma, sample_rate, steps)], delta)

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
