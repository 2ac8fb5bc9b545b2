"""Server optimizers over FedAvg (Reddi et al., 2021, "Adaptive federated optimization").

The round's example-weighted mean is folded in O(model) memory exactly as FedAvg does; at the end
the pseudo-gradient ``delta = mean - global`` drives an optimizer step on the global model, one
tensor at a time. The optimizer (:class:`ServerOptimizer`, one file per paper: ``fedavgm``,
``fedadam``, ``fedyogi``, ``fedadagrad``) keeps its model-sized moments as arrays
(``state_arrays``, committed next to the model as safetensors) and a small JSON state (its step
count, which is the ``t`` of Adam's bias correction: Flower's ``server_round`` when every round
commits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedhive.common.errors import AggregationError
from fedhive.common.tensors import TensorSpec, from_float, to_float
from fedhive.server.strategy.base import StagedUpdate
from fedhive.server.strategy.fedavg import FedAvg


class ServerOptimizer(Protocol):
    """One optimizer step per round, tensor by tensor; ``t`` counts the steps (1 on the first)."""

    def step(self, index: int, current: np.ndarray, average: np.ndarray, t: int) -> np.ndarray:
        """The new value of tensor ``index`` (flat float arrays in, flat float array out)."""
        ...

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Model-sized state (moments), named ``"<moment>/<tensor index>"``."""
        ...

    def restore_arrays(self, arrays: dict[str, np.ndarray]) -> None: ...


class Moments:
    """Named model-sized buffers, created as zeros (or as a given array) on first use."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, index: int) -> np.ndarray | None:
        return self.buffers.get(f"{name}/{index}")

    def put(self, name: str, index: int, value: np.ndarray) -> None:
        self.buffers[f"{name}/{index}"] = value

    def state_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.buffers)

    def restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        unknown = [k for k in arrays if k.split("/", 1)[0] not in self.names]
        if unknown:
            raise AggregationError(f"unknown optimizer state {sorted(unknown)[:3]}")
        self.buffers = {k: np.array(v) for k, v in arrays.items()}


class ServerOptimizing:
    """An :class:`~fedhive.server.strategy.base.Aggregator`: FedAvg's fold, then ``optimizer``'s
    step from the current global model."""

    def __init__(self, optimizer: ServerOptimizer) -> None:
        self.optimizer = optimizer
        self.mean = FedAvg()
        self.steps = 0
        self._global: list[np.ndarray] = []
        self.specs: list[TensorSpec] = []

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        if global_raw is None:
            raise AggregationError("a server optimizer needs the current global model")
        self.specs = list(specs)
        self._global = list(global_raw)
        self.mean.begin(specs, global_raw)

    def fold(self, update: StagedUpdate) -> None:
        self.mean.fold(update)

    def finalize(self) -> list[np.ndarray]:
        averaged = self.mean.finalize()
        t = self.steps + 1
        out = []
        for index, spec in enumerate(self.specs):
            if spec.dtype not in ("float32", "float64", "float16", "bfloat16"):
                out.append(averaged[index])  # counters and integer buffers: the plain mean
                continue
            current = to_float(np.ascontiguousarray(self._global[index]), spec.dtype)
            mean = to_float(np.ascontiguousarray(averaged[index]), spec.dtype)
            new = self.optimizer.step(index, current.reshape(-1), mean.reshape(-1), t)
            out.append(from_float(new, spec.dtype).reshape(spec.shape))
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
        return self.optimizer.state_arrays()

    def restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.optimizer.restore_arrays(arrays)
