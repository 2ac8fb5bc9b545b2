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
  server optimizer's moments) written next to the model as safetensors, their digest in the state;
* ``rollback``: a round that is not committed leaves the strategy as the last committed round
  left it (a server optimizer stepped at ``finalize`` is restored from that state), so a live
  retry steps it once, exactly as a resumed run does;
* ``select``, ``configure``, ``aggregate_metrics``: the round's nodes, its training config and its
  metrics, by the strategy's own optional methods of those names, else as FedAvg does (a seeded
  sample of the connected nodes, the run's ``[train]`` table, example-weighted means).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.data.safetensors_io import SafetensorsFile, write_safetensors
from fedhive.common.errors import AggregationError, FedhiveError
from fedhive.common.wire.tensors import DTYPES, TensorSpec, raw_view
from fedhive.server.store import file_sha256
from fedhive.server.strategy.base import Aggregator
from fedhive.server.strategy.fedavg import FedAvg

ENGINE_KEYS = ("round", "evaluate")
"""Keys of a round's training config that the round engine sets and a strategy cannot change."""

ARRAYS_KEY = "_arrays"
"""Where the strategy state names its arrays file and digest (the rest is the aggregator's)."""


def weighted_mean(items: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Example-weighted mean of each metric over the items that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0) + n
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}


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


def _why(exc: AggregationError) -> str:
    """Why a round fails: a user stage's own reason (fedhive.server.pipeline), else the rule's."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"the strategy could not aggregate: {exc}"


def _scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int | str)


class StrategyHost:
    def __init__(self, aggregator: Aggregator | None, models_dir: Path) -> None:
        self.aggregator: Aggregator = aggregator if aggregator is not None else FedAvg()
        self.models_dir = models_dir
        self._committed: dict[str, Any] | None = None  # the state the last commit recorded
        self._stepped = False  # finalize or from_mean ran since that commit

    def rollback(self) -> None:
        """The round will not be committed: back to the last committed state (a no-op unless
        the strategy stepped since, e.g. a server optimizer whose model was non-finite)."""
        if self._stepped and self._committed is not None:
            self.restore(self._committed)
        self._stepped = False

    def begin(self, specs: Sequence[TensorSpec], global_path: Path) -> None:
        self.aggregator.begin(specs, CheckpointModel(global_path, specs))

    def finalize(self) -> tuple[list[np.ndarray], str]:
        """The new model and ``""``, or no model and why the rule could not aggregate."""
        self._stepped = True
        try:
            return self.aggregator.finalize(), ""
        except AggregationError as exc:
            return [], _why(exc)

    def from_mean(
        self, specs: Sequence[TensorSpec], mean: list[np.ndarray], global_path: Path
    ) -> tuple[list[np.ndarray], str]:
        """The new model from a round's example-weighted mean computed elsewhere."""
        step = getattr(self.aggregator, "from_mean", None)
        if step is None:
            return mean, ""
        self._stepped = True
        try:
            return step(specs, mean, CheckpointModel(global_path, specs)), ""
        except AggregationError as exc:
            return [], _why(exc)

    def select(
        self, round_: int, attempt: int, candidates: Sequence[str], k: int, seed: int
    ) -> set[str]:
        """The round's nodes among ``candidates``: the strategy's ``select(round, candidates,
        k)``, else ``k`` of them sampled with the run's seed."""
        ordered = sorted(candidates)
        choose = getattr(self.aggregator, "select", None)
        if choose is None:
            return set(random.Random(f"{seed}:{round_}:{attempt}").sample(ordered, k))
        chosen = set(choose(round_, ordered, k))
        strangers = chosen - set(ordered)
        if not chosen or strangers:
            raise AggregationError(
                f"the strategy's select() returned {sorted(chosen)[:5]}: it must name at least "
                "one of the connected nodes it was offered, and only those"
                + (f" (not {sorted(strangers)[:3]})" if strangers else "")
            )
        return chosen

    def configure(self, round_: int, config: Mapping[str, Any]) -> dict[str, Any]:
        """The round's training config: the strategy's ``configure(round, config)``, else as is.
        The keys the engine sets (``round``, ``evaluate``) keep the engine's values."""
        hook = getattr(self.aggregator, "configure", None)
        if hook is None:
            return dict(config)
        new = dict(hook(round_, dict(config)))
        bad = [k for k, v in new.items() if not isinstance(k, str) or not _scalar(v)]
        if bad:
            raise AggregationError(
                f"the strategy's configure() returned non-scalar values for {bad[:5]}: a training "
                "config holds bool, int, finite float or str values"
            )
        return {**new, **{k: config[k] for k in ENGINE_KEYS if k in config}}

    def aggregate_metrics(self, items: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, Any]:
        """The round's metrics from each node's (examples, metrics): the strategy's
        ``aggregate_metrics(items)``, else example-weighted means."""
        hook = getattr(self.aggregator, "aggregate_metrics", None)
        return dict(hook(list(items))) if hook is not None else weighted_mean(items)

    def abandon(self) -> None:
        """A round that will not finalize: the strategy drops what it kept for it."""
        drop = getattr(self.aggregator, "abandon", None)
        if drop is not None:
            drop()

    def state(self, round_: int) -> dict[str, Any]:
        """The JSON state to commit with round ``round_``; arrays go to their own file first.
        Taken only to be committed: it is the state a later :meth:`rollback` returns to."""
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
        self._committed, self._stepped = dict(state), False
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        """The aggregator as it was when ``state`` was committed (its arrays checked first)."""
        self._committed, self._stepped = dict(state), False
        state = dict(state)
        arrays = state.pop(ARRAYS_KEY, None)
        self.aggregator.restore(state)
        restore_arrays = getattr(self.aggregator, "restore_arrays", None)
        if arrays is None:
            if restore_arrays is not None:  # none committed yet (round 0): none kept
                restore_arrays({})
            return
        path = self.models_dir / str(arrays["file"])
        digest = file_sha256(path) if path.is_file() else ""
        if digest != arrays["sha256"]:
            raise FedhiveError(f"{path}: the strategy state is missing or damaged")
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
