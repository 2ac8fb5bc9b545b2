"""Server optimizers over FedAvg (Reddi et al., 2021, "Adaptive federated optimization").

The round's example-weighted mean is folded in O(model) memory exactly as FedAvg does; at the end
the pseudo-gradient ``delta = mean - global`` drives an optimizer step on the global model, one
tensor at a time. The optimizer (:class:`ServerOptimizer`, one file per paper: ``fedavgm``,
``fedadam``, ``fedyogi``, ``fedadagrad``) keeps its model-sized moments as arrays
(``state_arrays``, committed next to the model as safetensors) and a small JSON state (its step
count, which is the ``t`` of Adam's bias correction: Flower's ``server_round`` when every round
commits). Moments start as zeros, as in Flower; the step works on slices of ``SLICE`` values, in
place, so its temporaries are slice-sized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.errors import AggregationError
from fedhive.common.wire.tensors import TensorSpec, from_float, to_float
from fedhive.server.strategy.base import StagedUpdate
from fedhive.server.strategy.fedavg import FedAvg

SLICE = 2**18
"""Values per optimizer step call: temporaries stay this size, not the model's."""


class AdaptiveArgs(BaseModel):
    """The adaptive optimizers' settings (Reddi et al. 2021); each rule sets its own defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(default=0.1, gt=0, description="server learning rate")
    beta_1: float = Field(default=0.9, ge=0, lt=1)
    beta_2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-9, gt=0, description="adaptivity (epsilon)")


def first_moment(m: np.ndarray, delta: np.ndarray, beta_1: float) -> np.ndarray:
    """``m <- beta_1 m + (1 - beta_1) delta``, in place."""
    m *= beta_1
    m += (1 - beta_1) * delta
    return m


class ServerOptimizer(Protocol):
    """The math of one server step, slice by slice: ``state`` holds views of this slice of each
    of the optimizer's ``moments`` (zeros before the first step), updated in place; ``t`` counts
    the steps (1 on the first)."""

    moments: tuple[str, ...]

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        """The new values of this slice of the global model."""
        ...


class ServerOptimizing:
    """An :class:`~fedhive.server.strategy.base.Aggregator`: FedAvg's fold, then ``optimizer``'s
    step from the current global model. Memory: the model's running sum (as FedAvg), the
    optimizer's moments (model-sized each), and slices."""

    def __init__(self, optimizer: ServerOptimizer) -> None:
        self.optimizer = optimizer
        self.mean = FedAvg()
        self.steps = 0
        self._global: Sequence[np.ndarray] = []
        self._moments: dict[str, np.ndarray] = {}
        self.specs: list[TensorSpec] = []

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        if global_raw is None:
            raise AggregationError("a server optimizer needs the current global model")
        self.specs = list(specs)
        self._global = global_raw
        self.mean.begin(specs, global_raw)

    def fold(self, update: StagedUpdate) -> None:
        self.mean.fold(update)

    def _moment(self, name: str, index: int, like: np.ndarray) -> np.ndarray:
        key = f"{name}/{index}"
        buf = self._moments.get(key)
        if buf is None or buf.shape != (like.size,) or buf.dtype != like.dtype:
            buf = self._moments[key] = np.zeros(like.size, dtype=like.dtype)
        return buf

    def finalize(self) -> list[np.ndarray]:
        return self._step(self.mean.finalize())

    def from_mean(
        self,
        specs: Sequence[TensorSpec],
        mean: list[np.ndarray],
        global_raw: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """The step from a round's mean computed elsewhere (SecAgg+'s unmasked sum); the mean's
        arrays are consumed (the new values are written over them where they are writable)."""
        self.specs = list(specs)
        self._global = global_raw
        return self._step([np.ascontiguousarray(a).reshape(-1) for a in mean])

    def _step(self, averaged: list[np.ndarray]) -> list[np.ndarray]:
        # a step may overflow (a huge mean times the server rate): the round's close refuses a
        # non-finite model and the strategy goes back to its committed state
        with np.errstate(over="ignore", invalid="ignore"):
            return self._step_values(averaged)

    def _step_values(self, averaged: list[np.ndarray]) -> list[np.ndarray]:
        t = self.steps + 1
        out = []
        for index, spec in enumerate(self.specs):
            if spec.dtype not in ("float32", "float64", "float16", "bfloat16"):
                out.append(averaged[index])  # counters and integer buffers: the plain mean
                continue
            current = to_float(np.ascontiguousarray(self._global[index]), spec.dtype).reshape(-1)
            mean = to_float(np.ascontiguousarray(averaged[index]), spec.dtype).reshape(-1)
            moments = {m: self._moment(m, index, current) for m in self.optimizer.moments}
            # the new values overwrite the mean, slice by slice (it is read only there)
            new = mean if mean.flags.writeable else mean.copy()
            release = getattr(self._global, "release", None)  # a checkpoint read once
            for lo in range(0, current.size, SLICE):
                hi = min(current.size, lo + SLICE)
                views = {m: buf[lo:hi] for m, buf in moments.items()}
                new[lo:hi] = self.optimizer.step(views, current[lo:hi], new[lo:hi], t)
                if release is not None:
                    release(index, lo, hi)
            out.append(from_float(new, spec.dtype).reshape(spec.shape))
            averaged[index] = np.empty(0)  # release as we go
        self.steps = t
        self._global = []
        return out

    def state(self) -> dict[str, object]:
        return {"steps": self.steps}

    def restore(self, state: dict[str, object]) -> None:
        steps = state.get("steps", 0)
        if not isinstance(steps, int) or steps < 0:
            raise AggregationError(f"bad server optimizer state: steps={steps!r}")
        self.steps = steps

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Model-sized state (moments), named ``"<moment>/<tensor index>"``."""
        return dict(self._moments)

    def restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        known = set(self.optimizer.moments)
        unknown = [k for k in arrays if k.split("/", 1)[0] not in known]
        if unknown:
            raise AggregationError(f"unknown optimizer state {sorted(unknown)[:3]}")
        self._moments = {k: np.array(v).reshape(-1) for k, v in arrays.items()}
