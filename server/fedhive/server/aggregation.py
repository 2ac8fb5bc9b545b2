"""The round engine's one seam to its strategy: what the coordinator calls, whatever the rule.

``StrategyHost`` owns the run's :class:`~fedhive.server.strategy.base.Aggregator` and gives it
what it needs without the engine asking which one it is:

* ``begin``: the current global model, read lazily from the round's committed checkpoint (a rule
  that never looks at it costs nothing);
* ``finalize``: the new model, or the reason the rule could not aggregate (too few updates for a
  robust rule, a server optimizer without a model): the round then fails, the model untouched;
* ``from_mean``: the new model from a mean computed elsewhere (SecAgg+'s unmasked sum), for the
  rules that need only the sum;
* ``state`` / ``restore``: the JSON state committed with each round, plus model-sized arrays (a
  server optimizer's moments) written next to the model as safetensors, their digest in the state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.errors import AggregationError, FedhiveError
from fedhive.common.safetensors_io import SafetensorsFile, write_safetensors
from fedhive.common.tensors import DTYPES, TensorSpec, raw_view
from fedhive.server.strategy.base import Aggregator
from fedhive.server.strategy.fedavg import FedAvg

ARRAYS_KEY = "_arrays"
"""Where the strategy state names its arrays file and digest (the rest is the aggregator's)."""


class CheckpointModel(Sequence[np.ndarray]):
    """A committed checkpoint's tensors as flat raw arrays, each read when first asked for."""

    def __init__(self, path: Path, specs: Sequence[TensorSpec]) -> None:
        self.path = path
        self.specs = list(specs)
        self._file: SafetensorsFile | None = None

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if self._file is None:
            self._file = SafetensorsFile(self.path)
            if [(s.name, s.dtype, s.shape) for s in self._file.specs] != [
                (s.name, s.dtype, s.shape) for s in self.specs
            ]:
                raise AggregationError(f"{self.path}: not this run's model")
        spec = self.specs[index]
        return np.frombuffer(self._file.buffer(index), dtype=DTYPES[spec.dtype].storage)

    def release(self, index: int, start: int, stop: int) -> None:
        """Values ``start:stop`` of tensor ``index`` were read: drop their pages from RSS."""
        if self._file is not None:
            size = DTYPES[self.specs[index].dtype].itemsize
            self._file.release(index, start * size, stop * size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


class StrategyHost:
    def __init__(self, aggregator: Aggregator | None, models_dir: Path) -> None:
        self.aggregator: Aggregator = aggregator if aggregator is not None else FedAvg()
        self.models_dir = models_dir

    def begin(self, specs: Sequence[TensorSpec], global_path: Path) -> None:
        self.aggregator.begin(specs, CheckpointModel(global_path, specs))

    def finalize(self) -> tuple[list[np.ndarray], str]:
        """The new model and ``""``, or no model and why the rule could not aggregate."""
        try:
            return self.aggregator.finalize(), ""
        except AggregationError as exc:
            return [], f"the strategy could not aggregate: {exc}"

    def from_mean(
        self, specs: Sequence[TensorSpec], mean: list[np.ndarray], global_path: Path
    ) -> tuple[list[np.ndarray], str]:
        """The new model from a round's example-weighted mean computed elsewhere."""
        step = getattr(self.aggregator, "from_mean", None)
        if step is None:
            return mean, ""
        try:
            return step(specs, mean, CheckpointModel(global_path, specs)), ""
        except AggregationError as exc:
            return [], f"the strategy could not aggregate: {exc}"

    def abandon(self) -> None:
        """A round that will not finalize: the strategy drops what it kept for it."""
        drop = getattr(self.aggregator, "abandon", None)
        if drop is not None:
            drop()

    def state(self, round_: int) -> dict[str, Any]:
        """The JSON state to commit with round ``round_``; arrays go to their own file first."""
        state = dict(self.aggregator.state())
        arrays_of = getattr(self.aggregator, "state_arrays", None)
        arrays: dict[str, np.ndarray] = dict(arrays_of()) if arrays_of is not None else {}
        if arrays:
            name = f"strategy-{round_:04d}.safetensors"
            names = sorted(arrays)
            specs = [TensorSpec(k, arrays[k].dtype.name, arrays[k].shape) for k in names]
            digest = hashlib.sha256()
            write_safetensors(
                self.models_dir / name,
                specs,
                [raw_view(arrays[k]) for k in names],
                {"round": str(round_)},
                hasher=digest,
            )
            state[ARRAYS_KEY] = {"file": name, "sha256": digest.hexdigest()}
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        """The aggregator as it was when ``state`` was committed (its arrays checked first)."""
        state = dict(state)
        arrays = state.pop(ARRAYS_KEY, None)
        self.aggregator.restore(state)
        if arrays is None:
            return
        path = self.models_dir / str(arrays["file"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        if digest != arrays["sha256"]:
            raise FedhiveError(f"{path}: the strategy state is missing or damaged")
        restore_arrays = getattr(self.aggregator, "restore_arrays", None)
        if restore_arrays is None:
            raise FedhiveError(f"{path}: the strategy of this run keeps no arrays")
        f = SafetensorsFile(path)
        try:
            restore_arrays(
                {
                    s.name: np.frombuffer(f.buffer(i), dtype=DTYPES[s.dtype].storage)
                    .copy()
                    .reshape(s.shape)
                    for i, s in enumerate(f.specs)
                }
            )
        finally:
            f.close()
