"""Central node-level DP (``[dp.central]``) as a wrapper of any streaming strategy.

Per round, with ``C`` the clip and ``m`` the number of nodes selected for the round (fixed before
any update arrives):

1. each checked update's delta ``d_i = update_i - global`` is clipped to L2 norm ``C`` (the norm
   over every tensor of the model) and added to a float64 running sum: O(model) memory, two
   reads of the staged update (one for the norm, one for the fold);
2. at the end, Gaussian noise of std ``z_delta x C`` is added to the sum, which is divided by
   ``m``: the new mean is ``global + (sum_i clip(d_i) + N(0, (z_delta C)^2 I)) / m``;
3. that private mean goes to the wrapped strategy as the round's one update (FedAvg takes it as
   is; FedAdam & co. step from it). Whatever the strategy then does is post-processing of a
   private release, so the guarantee holds for any streaming strategy.

Sensitivity: adding or removing one node changes the sum by at most ``C`` (its clipped delta),
so the sum is a Gaussian mechanism of noise multiplier ``z``. That needs a *fixed-weight* mean:
each node weighs ``1/m``, never its example count (a node's own claim that would scale its
delta past the bound), and ``m`` is the selected count, not the number that reported (that would
depend on who is in the data). Nodes that drop out contribute a zero delta.

Adaptive clipping (Andrew et al. 2021): after the round, ``C <- C exp(-eta (b - gamma))`` with
``b = (#{i: |d_i| <= C} + N(0, sigma_b^2)) / m``; its noise is accounted with the delta's (see
:meth:`CentralDPSettings.delta_noise_multiplier`). ``C`` is committed with the strategy state.

Rules that must see each update (median, Krum ...) are refused: their output is not a sum, so
the clipping bound says nothing about how far one node can move it.
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.errors import AggregationError, ConfigError
from fedhive.common.privacy.central import CentralDPSettings
from fedhive.common.wire.tensors import TensorSpec, from_float, raw_view, to_float
from fedhive.server.privacy.noise import SLICE, GaussianNoise
from fedhive.server.strategy.base import Aggregator, StagedUpdate, delta_pieces

DELEGATED = frozenset({"configure", "aggregate_metrics", "state_arrays", "restore_arrays"})
"""Optional strategy hooks the wrapper passes to the strategy it wraps."""


class PrivateMean:
    """The round's private mean as one staged update (weight 1) for the wrapped strategy."""

    num_examples = 1

    def __init__(self, specs: Sequence[TensorSpec], raw: Sequence[np.ndarray]) -> None:
        self.specs = specs
        self.raw = raw

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        data = self.raw[tensor]
        for lo in range(0, data.size, SLICE):
            yield raw_view(np.ascontiguousarray(data[lo : lo + SLICE]))


class CentralDP:
    """An :class:`~fedhive.server.strategy.base.Aggregator` around ``inner``: clip, sum, noise."""

    needs_updates = False

    def __init__(
        self, inner: Aggregator, settings: CentralDPSettings, noise: GaussianNoise | None = None
    ) -> None:
        self.inner = inner
        self.settings = settings
        self.noise = noise if noise is not None else GaussianNoise()
        self.clip = settings.clip  # the next round's clip (moves with adaptive clipping)
        self._next_clip: float | None = None  # this round's update of it, until committed
        self.selected: int | None = None
        self.specs: list[TensorSpec] = []
        self._global: Sequence[np.ndarray] = []
        self._sums: list[np.ndarray] = []
        self.updates = 0
        self.unclipped = 0
        self.round_clip = settings.clip

    def __getattr__(self, name: str) -> Any:
        if name in DELEGATED:
            return getattr(self.inner, name)
        raise AttributeError(name)

    # -------------------------------------------------------------- the round
    def expect(self, selected: int) -> None:
        """The round's selected count ``m``: the fixed denominator of its mean."""
        if selected < 1:
            raise AggregationError("central DP: a round selects at least one node")
        self.selected = selected

    def select(self, round_: int, candidates: Sequence[str], k: int) -> list[str]:
        """``k`` of the candidates, sampled uniformly from the OS's CSPRNG (the accountant's
        subsampling amplification assumes nobody can predict who is selected; the run's seed
        is no secret). A wrapped strategy's own ``select`` wins (it then owns that claim)."""
        own = getattr(self.inner, "select", None)
        if own is not None:
            return list(own(round_, candidates, k))
        return secrets.SystemRandom().sample(list(candidates), k)

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        if global_raw is None:
            raise AggregationError("central DP needs the current global model (deltas)")
        self.specs = list(specs)
        self._global = global_raw
        self._sums = [np.zeros(s.numel, dtype=np.float64) for s in self.specs]
        self.updates = self.unclipped = 0
        self.round_clip = self.clip
        self._next_clip = None  # an uncommitted round's clip change is dropped
        self.inner.begin(specs, global_raw)  # (``selected``: set by expect before the round opens)

    def _deltas(self, update: StagedUpdate, index: int) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, float64 delta) pieces of tensor ``index`` of ``update``."""
        return delta_pieces(update, index, self.specs[index], self._global[index])

    def norm(self, update: StagedUpdate) -> float:
        """The L2 norm of the update's delta over the whole model."""
        total = 0.0
        for index in range(len(self.specs)):
            for _, delta in self._deltas(update, index):
                total += float(np.einsum("i,i->", delta, delta))  # BLAS dot: slower here
        return math.sqrt(total)

    def fold(self, update: StagedUpdate) -> None:
        norm = self.norm(update)
        self.updates += 1
        if norm <= self.round_clip:
            self.unclipped += 1
        if not math.isfinite(norm) or norm == 0.0:
            return  # a zero delta (or one too large to measure: clipped to nothing)
        scale = min(1.0, self.round_clip / norm)
        for index in range(len(self.specs)):
            acc = self._sums[index]
            for pos, delta in self._deltas(update, index):
                delta *= scale
                acc[pos : pos + delta.size] += delta

    def finalize(self) -> list[np.ndarray]:
        if self.updates == 0:
            raise AggregationError("no update was folded this round")
        m = self.selected
        if m is None or m < self.updates:
            raise AggregationError(
                f"central DP: {self.updates} update(s) but {m} node(s) selected: the round's "
                "selected count must be set (expect) and cover every update"
            )
        std = self.settings.delta_noise_multiplier() * self.round_clip
        raw: list[np.ndarray] = []
        for index, spec in enumerate(self.specs):
            acc = self._sums[index]
            current = self._global[index]
            for lo in range(0, acc.size, SLICE):
                hi = min(acc.size, lo + SLICE)
                part = acc[lo:hi]
                part += std * self.noise.standard_normal(hi - lo)
                part /= m
                part += to_float(np.ascontiguousarray(current[lo:hi]), spec.dtype)
            raw.append(from_float(acc, spec.dtype))
            self._sums[index] = np.empty(0)  # release as we go
        self._sums = []
        self.selected = None  # each round's count is set anew (expect)
        self._adapt(m)
        self.inner.fold(PrivateMean(self.specs, raw))
        del raw
        return self.inner.finalize()

    def _adapt(self, m: int) -> None:
        s = self.settings
        if not s.adaptive or s.count_noise_std is None:
            return
        share = (self.unclipped + self.noise.normal(s.count_noise_std)) / m
        self._next_clip = self.round_clip * math.exp(
            -s.clip_learning_rate * (share - s.target_quantile)
        )

    def abandon(self) -> None:
        self._sums, self.updates, self.unclipped = [], 0, 0
        self.selected = None
        drop = getattr(self.inner, "abandon", None)
        if drop is not None:
            drop()

    # -------------------------------------------------------------- state
    def state(self) -> dict[str, object]:
        """Taken when a round commits (the engine's only other call is for round 0): the round's
        clip change takes effect here, so a round that fails after finalizing (a non-finite
        model) changes nothing; its noised count was never released."""
        if self._next_clip is not None:
            self.clip, self._next_clip = self._next_clip, None
        return {"clip": self.clip, "inner": dict(self.inner.state())}

    def restore(self, state: dict[str, object]) -> None:
        clip = state.get("clip", self.settings.clip)
        inner = state.get("inner", {})
        if not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
            raise AggregationError(f"bad central DP state: clip={clip!r}")
        if not isinstance(inner, dict):
            raise AggregationError("bad central DP state: inner is not a table")
        self.clip = float(clip)
        self.inner.restore(inner)


def wrap_central(config: ServerConfig, aggregator: Aggregator, sum_only: bool) -> Aggregator:
    """The run's aggregator under ``[dp.central]`` (``aggregator`` itself without it); refused
    for a rule that must see each update (``sum_only``: the built-in is one that needs only the
    sum; a user strategy that declares ``needs_updates`` is refused too)."""
    dp = config.dp
    if dp is None or dp.central is None:
        return aggregator
    robust = getattr(aggregator, "needs_updates", False) or (
        ":" not in config.strategy and not sum_only
    )
    if robust:
        raise ConfigError(
            f"[dp.central] with strategy = {config.strategy!r}: a robust rule (median, trimmed "
            "mean, Krum ...) is not a sum of the clipped updates, so the clipping bound does not "
            "bound one node's influence and the noise calibration does not hold; use fedavg, "
            "fedavgm, fedadam, fedyogi or fedadagrad (or a streaming strategy of your own)"
        )
    if importlib.util.find_spec("opacus") is None:
        raise ConfigError(
            "[dp.central] needs Opacus's RDP accountant, which is not installed: "
            "pip install 'fedhive[dp]'"
        )
    return CentralDP(aggregator, dp.central)
