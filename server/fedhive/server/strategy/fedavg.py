"""FedAvg (McMahan et al., 2017): the example-weighted mean of the nodes' full weights.

theta = sum_i n_i * theta_i / sum_i n_i, folded update by update into one running sum per tensor
(float32; float64 for 64-bit tensors), so memory is O(model) whatever the number of nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.wire.tensors import TensorSpec, from_float, to_float
from fedhive.server.strategy.base import StagedUpdate

# the running sums stay below this share of their dtype's maximum (rounding can only add a little)
OVERFLOW_HEADROOM = 0.5


def _acc_dtype(spec: TensorSpec) -> type[np.floating]:
    return np.float64 if spec.dtype in ("float64", "int64") else np.float32


class FedAvg:
    def __init__(self) -> None:
        self.specs: list[TensorSpec] = []
        self._sums: list[np.ndarray] = []
        self._bounds: list[float] = []
        self.total_examples = 0
        self.updates = 0

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        self.specs = list(specs)
        self._sums = [np.zeros(s.numel, dtype=_acc_dtype(s)) for s in self.specs]
        self.total_examples = 0
        self.updates = 0
        self._bounds = [0.0] * len(self.specs)

    def fold(self, update: StagedUpdate) -> None:
        if update.num_examples <= 0:
            raise ValueError("an update must carry a positive example count")
        weight = float(update.num_examples)
        bounds = self._check_overflow(update, weight)
        for index, spec in enumerate(self.specs):
            acc = self._sums[index]
            pos = 0
            for piece in update.pieces(index):
                values = to_float(piece, spec.dtype)
                n = values.size
                target = acc[pos : pos + n]
                if weight == 1.0:
                    target += values
                else:
                    target += values * acc.dtype.type(weight)
                pos += n
        self.total_examples += update.num_examples
        self.updates += 1
        if bounds is not None:
            self._bounds = bounds

    def _check_overflow(self, update: StagedUpdate, weight: float) -> list[float] | None:
        """Refuse, before folding anything, an update that could make a running sum overflow:
        the sums stay below half their dtype's maximum, with sum_i n_i * max|theta_i| as bound
        (``peaks``: the largest magnitude per tensor, from the stream's checks)."""
        peaks = getattr(update, "peaks", None)
        if peaks is None:
            return None
        bounds = []
        for index, spec in enumerate(self.specs):
            limit = float(np.finfo(_acc_dtype(spec)).max) * OVERFLOW_HEADROOM
            bound = self._bounds[index] + weight * float(peaks[index])
            if not bound < limit:
                raise InvalidUpdateError(
                    f"tensor {spec.name!r} holds values up to {float(peaks[index]):.3g} in "
                    f"magnitude which, weighted by {update.num_examples} examples, would "
                    f"overflow the aggregate's {_acc_dtype(spec).__name__} sum"
                )
            bounds.append(bound)
        return bounds

    def finalize(self) -> list[np.ndarray]:
        if self.updates == 0 or self.total_examples <= 0:
            raise ValueError("no update was folded this round")
        out: list[np.ndarray] = []
        for index, spec in enumerate(self.specs):
            acc = self._sums[index]
            acc /= acc.dtype.type(self.total_examples)
            out.append(from_float(acc, spec.dtype).reshape(spec.shape))
            self._sums[index] = np.empty(0, dtype=acc.dtype)  # release as we go
        self._sums = []
        return out

    def state(self) -> dict[str, object]:
        """FedAvg keeps nothing between rounds."""
        return {}

    def restore(self, state: dict[str, object]) -> None:
        if state:
            raise ValueError(f"FedAvg has no state to restore, got keys {sorted(state)}")
