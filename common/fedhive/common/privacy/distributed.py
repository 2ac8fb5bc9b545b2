"""Distributed differential privacy inside SecAgg+ (node-level DP, add/remove one node).

Every selected node clips its update's delta (trained minus downloaded model) to the L2 norm
``clip``, quantizes it with weight 1 on the SecAgg+ grid of ``bits`` (step ``2 clip / L``,
``L = 2^bits - 1``) and adds its share of discrete Gaussian noise, in the integer domain, before
masking: the coordinator only ever unmasks an already-noised sum.

**Sensitivity.** A node's integer contribution, less the public offset ``L / 2`` per coordinate,
is ``x / step`` rounded stochastically: each coordinate moves by less than 1, so its L2 norm is at
most ``clip / step + sqrt(d) = L / 2 + sqrt(d)`` for ``d`` coordinates (the rounding bound of
Kairouz, Liu and Steinke 2021 without conditional rounding). That is ``Delta`` in grid units.

**Noise.** The target is ``sigma = z Delta`` on the sum (``z`` the noise multiplier). Each node adds
``N_Z(0, s)`` with ``s >= sigma^2 / e`` (``e`` the survivors expected of ``n`` selected,
``ceil(n (1 - expected_dropout))``), so the survivors' ``m`` shares give variance ``m s``: the
accountant counts exactly that, ``z_delivered = sqrt(m s) / Delta``, fewer survivors meaning
less noise and more epsilon. A sum of discrete Gaussians is not exactly a discrete Gaussian;
Kairouz et al. bound the gap by ``tau = 10 sum_{k<m} exp(-2 pi^2 s k / (k + 1))``, which
:func:`plan` requires to be negligible (``s >= MIN_NODE_VARIANCE``).

**Field.** The unmasked sum is taken mod ``2^32``. It lies in ``[0, n L]`` plus noise; the
coordinator reads it in a window ``[-M, 2^32 - M)``. :func:`plan` refuses settings where the
noise could leave the window (beyond ``TAIL`` standard deviations: probability below 1e-40).

**Accounting.** Each round is a subsampled Gaussian mechanism with sampling rate
``selected / alive`` and noise multiplier ``z_delivered`` (the project's accountant,
:mod:`fedhive.common.privacy.rdp`; the discrete
Gaussian has the same Renyi divergences bound as the continuous one, Canonne et al. 2020). Its
state is the list of past rounds' ``(sample_rate, noise_multiplier)``, kept in the round
records, so a resumed run continues it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.api.hooks import Block
from fedhive.common.errors import ConfigError, InvalidUpdateError
from fedhive.common.privacy import rdp
from fedhive.common.privacy.discrete_gaussian import (
    SecureBits,
    discrete_gaussian,
    sampling_variance,
)
from fedhive.common.secagg.quantize import MODULUS, QuantConfig

TAIL = 14.0  # standard deviations of noise kept inside the field: P(beyond) < 1e-40
MIN_NODE_VARIANCE = 16  # per-node variance in grid units^2: tau ~ 10 n exp(-158), negligible
LEVEL = "distributed"
NOISE_BLOCK = 1 << 20  # words noised per pass


class DistributedDPSettings(BaseModel):
    """``[dp.distributed]``: node-level DP with the noise added by the nodes inside SecAgg+."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    clip: float = Field(gt=0, allow_inf_nan=False)  # L2 norm of each node's delta
    bits: int = Field(default=16, ge=2, le=30)  # quantization grid: 2^bits - 1 steps over 2 clip
    expected_dropout: float = Field(default=0.0, ge=0, lt=1)  # fraction expected to drop


@dataclass(frozen=True)
class DistributedPlan:
    """One round's calibration (all in grid units)."""

    settings: DistributedDPSettings
    nodes: int  # selected
    elements: int  # d
    expected: int  # survivors the noise is calibrated for
    node_variance: int  # s: each node's discrete Gaussian variance
    margin: int  # M: the window's room below zero

    @property
    def quant(self) -> QuantConfig:
        return QuantConfig(self.settings.clip, self.settings.bits, 1)

    @property
    def sensitivity(self) -> float:
        return self.quant.levels / 2 + math.sqrt(self.elements)

    def delivered(self, survivors: int) -> float:
        """The noise multiplier the sum of ``survivors`` shares actually carries."""
        return math.sqrt(survivors * self.node_variance) / self.sensitivity

    def task_config(self) -> dict[str, Any]:
        """What the nodes get: the share's clip and variance, and the settings it was calibrated
        from (each node recomputes the variance from them: :func:`share_refusal`)."""
        return {
            "secagg_dp_clip": self.settings.clip,
            "secagg_dp_variance": str(self.node_variance),
            "secagg_dp_noise_multiplier": self.settings.noise_multiplier,
            "secagg_dp_expected_dropout": self.settings.expected_dropout,
        }


def plan(settings: DistributedDPSettings, nodes: int, elements: int) -> DistributedPlan:
    """Calibrate a round of ``nodes`` selected over ``elements`` coordinates; refuse settings
    whose noised sum could overflow the SecAgg+ field (naming them)."""
    quant = QuantConfig(settings.clip, settings.bits, 1)
    sensitivity = quant.levels / 2 + math.sqrt(elements)
    expected = max(1, math.ceil(nodes * (1 - settings.expected_dropout) - 1e-9))
    target = (settings.noise_multiplier * sensitivity) ** 2
    s = sampling_variance(Fraction(target) / expected)
    if s < MIN_NODE_VARIANCE:
        s = sampling_variance(MIN_NODE_VARIANCE)
    worst = TAIL * math.sqrt(nodes * float(s))  # every selected node survives: most noise
    top = nodes * quant.levels
    if top + 2 * worst >= MODULUS:
        raise ConfigError(
            f"dp.distributed would overflow the secure-aggregation field: {nodes} nodes x "
            f"(2^bits - 1 = {quant.levels}) plus {TAIL:g} standard deviations of noise each side "
            f"(noise_multiplier {settings.noise_multiplier}, sensitivity {sensitivity:.0f} grid "
            f"steps) needs {top + 2 * worst:.3g} >= 2^32; lower dp.distributed.bits, "
            f"dp.distributed.noise_multiplier or the number of nodes per round"
        )
    margin = (MODULUS - top) // 2
    return DistributedPlan(settings, nodes, elements, expected, int(s), margin)


def share_refusal(
    variance: int,
    settings: DistributedDPSettings | None,
    *,
    clip: float,
    bits: int,
    selected: int,
    threshold: int,
    elements: int,
    floor: float | None,
) -> str | None:
    """Why a node must not add its share (``variance``) to a round, or None: the node's check of
    the coordinator's claim, with the node's own ``elements`` (its model's size).

    - ``settings`` (the run's, as the task states them): the variance must be at least what
      :func:`plan` calibrates from them for ``selected`` nodes (and the clip the same);
    - ``floor`` (the site's own ``dp_min_noise_multiplier``): the noise multiplier of a sum of
      only ``threshold`` shares (the fewest survivors whose sum SecAgg+ can unmask with this
      node's update in it) must reach it.
    """
    quant = QuantConfig(clip, bits, 1)
    sensitivity = quant.levels / 2 + math.sqrt(elements)
    if settings is not None:
        if settings.clip != clip or settings.bits != bits:
            return (
                f"distributed DP: the task's clip {clip:g} / bits {bits} differ from its settings' "
                f"{settings.clip:g} / {settings.bits}"
            )
        try:
            want = plan(settings, selected, elements).node_variance
        except ConfigError as exc:
            return f"distributed DP: the task's settings cannot be calibrated: {exc}"
        if variance < want:
            return (
                f"distributed DP: the coordinator asks for noise variance {variance}, below the "
                f"{want} that its own settings imply (noise_multiplier "
                f"{settings.noise_multiplier:g}, clip {clip:g}, bits {bits}, expected_dropout "
                f"{settings.expected_dropout:g}, {selected} selected, {elements} elements)"
            )
    if floor is not None:
        least = math.sqrt(threshold * variance) / sensitivity
        if least < floor:
            return (
                f"distributed DP: with noise variance {variance} per node, a sum of "
                f"{threshold} survivors (the secure round's threshold) carries noise multiplier "
                f"{least:.4g}, below this site's dp_min_noise_multiplier = {floor:g}"
            )
    return None


def check_settings(settings: DistributedDPSettings, min_nodes: int) -> None:
    """The start-up check (the model's size is not known yet: the per-round check adds it).
    Loads the accountant now (seconds: Opacus imports much), not in the first round."""
    try:
        rdp.check_available()
    except ConfigError as exc:
        raise ConfigError(f"dp.distributed needs the accountant: {exc}") from exc
    plan(settings, min_nodes, 0)


# ----------------------------------------------------------------------------- node stages


class ClipDeltaStage:
    """Scale the whole update (float blocks of the delta) to L2 norm at most ``clip``.

    The norm needs every block first: the blocks are held (views of the node's arrays), then
    emitted scaled (copies).
    """

    name = "dp-clip"
    domain = "float"

    def __init__(self, clip: float) -> None:
        self.clip = clip
        self.norm = 0.0

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        held = list(blocks)
        total = 0.0
        for b in held:
            v = np.asarray(b.values, dtype=np.float64)
            if not np.isfinite(v).all():
                raise InvalidUpdateError("cannot clip non-finite values (NaN or inf)")
            total += float(np.dot(v, v))
        self.norm = math.sqrt(total)
        factor = min(1.0, self.clip / self.norm) if self.norm > 0 else 1.0
        for b in held:
            yield Block(b.start, np.asarray(b.values, dtype=np.float64) * factor)


def add_noise(words: np.ndarray, variance: int, bits: SecureBits, skip: int = 1) -> None:
    """Add ``N_Z(0, variance)`` to ``words[skip:]`` in place, mod 2^32 (block by block)."""
    for lo in range(skip, words.size, NOISE_BLOCK):
        hi = min(words.size, lo + NOISE_BLOCK)
        part = words[lo:hi]
        noise = discrete_gaussian(bits, hi - lo, variance)
        np.add(part, noise.astype(np.uint32), out=part)  # two's complement: adds mod 2^32


class NoiseStage:
    """Add ``N_Z(0, variance)`` to each quantized word, mod 2^32 (word 0, the count, is left).

    The node's runtime adds the same noise to its mask instead (the noise does not depend on
    the update, and addition mod 2^32 commutes), drawn from the moment the task arrives, in a
    thread of its own, while the node downloads, exchanges keys and trains: :func:`add_noise`.
    """

    name = "dp-noise"
    domain = "words"

    def __init__(self, variance: int, bits: SecureBits | None = None, skip: int = 1) -> None:
        if variance < 1:
            raise ConfigError(f"per-node noise variance must be >= 1, got {variance}")
        self.variance = variance
        self.bits = bits or SecureBits()
        self.skip = skip

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            lo = max(self.skip - b.start, 0)
            if lo >= b.values.size:
                yield b
                continue
            words = np.array(b.values, dtype=np.uint32)
            add_noise(words, self.variance, self.bits, skip=lo)
            yield Block(b.start, words)


# ----------------------------------------------------------------------------- coordinator


def decode(words: np.ndarray, survivors: int, plan_: DistributedPlan) -> np.ndarray:
    """The mean delta (float64) from a block of the unmasked noised sum (no count word)."""
    v = words.astype(np.int64)
    v[v >= MODULUS - plan_.margin] -= MODULUS  # the window [-M, 2^32 - M)
    out = v.astype(np.float64)
    out *= plan_.quant.step / survivors
    out -= plan_.settings.clip
    return out


def past_rounds(history: Iterable[Mapping[str, Any]]) -> list[rdp.Entry]:
    """The accountant's entries (noise multiplier, sample rate, 1 step) of every round whose
    noised sum was unmasked."""
    out = []
    for event in history:
        level = (event.get("privacy") or {}).get(LEVEL)
        if level:
            out.append((float(level["noise_multiplier"]), float(level["sample_rate"]), 1))
    return out


def round_privacy(
    plan_: DistributedPlan,
    survivors: int,
    alive: int,
    history: Iterable[Mapping[str, Any]],
    delta: float,
) -> dict[str, Any]:
    """The round record's ``privacy["distributed"]``: what this round delivered, and epsilon
    so far (this round included)."""
    q = min(1.0, plan_.nodes / max(alive, plan_.nodes))
    z = plan_.delivered(survivors)
    eps = rdp.epsilon([*past_rounds(history), (z, q, 1)], delta)
    return {
        "delta": delta,
        "epsilon": eps,
        "survivors": survivors,
        "selected": plan_.nodes,
        "sample_rate": q,
        "noise_multiplier": z,
        "target_noise_multiplier": plan_.settings.noise_multiplier,
        "clip": plan_.settings.clip,
        "node_variance": plan_.node_variance,
        "sensitivity": plan_.sensitivity,
    }
