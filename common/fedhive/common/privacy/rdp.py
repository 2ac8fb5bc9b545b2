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
from typing import Any

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


def epsilon(history: Sequence[Entry], delta: float) -> float:
    """The epsilon (at ``delta``) of the composed history; 0 for an empty one."""
    entries = [e for e in history if e[2] > 0]
    if not entries:
        return 0.0
    rdp = _rdp()
    total = None
    for sigma, q, steps in entries:
        part = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
        total = part if total is None else total + part
    with warnings.catch_warnings():  # an extreme best order: the bound holds, a little loose
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = rdp.get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
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

    high = 1.0
    while eps(high) > target:
        high *= 2
        if high > NOISE_MAX:
            raise ConfigError(
                f"no noise multiplier up to {NOISE_MAX} reaches epsilon {target} at delta "
                f"{delta} over {steps} steps at sample rate {sample_rate:.4g}"
            )
    low = NOISE_MIN
    if eps(low) <= target:
        return low
    while high - low > CALIBRATION_TOLERANCE * low:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high
