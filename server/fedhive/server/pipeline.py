"""The coordinator's update pipeline: user stages on each update and on the round's result.

The run config names them by import path (``[pipeline]`` of the coordinator's TOML,
:class:`~fedhive.common.api.pipeline.CoordinatorPipelineSettings`), with the node's convention
(:func:`~fedhive.common.api.pipeline.load_stages`: a class or a no-argument function returning a
fresh :class:`~fedhive.common.api.hooks.Stage`; float stages only). A round goes, in order::

    update -> [your update stages] -> [dp.central clip] -> strategy fold ... finalize
           (or SecAgg+: unmask -> dequantize) -> [dp noise] -> strategy step
           -> [your aggregate stages] -> commit

* ``update`` stages see each node's update as it arrives, as its delta from the round's global
  model (update - global) in float64 blocks tiling the flat model (every tensor's elements in
  spec order, as a node's float stage sees its own), and return the (possibly changed) delta;
  the strategy (or central DP's clip, which they therefore cannot undo, or a robust rule) then
  folds global + that delta, cast to each tensor's dtype. A stage refuses the update by raising
  :class:`~fedhive.common.errors.InvalidUpdateError`; any other exception, blocks that do not
  tile the model or non-finite values refuse it too, naming the stage: the node's entry in the
  round's ``refused``, nothing folded, the round goes on with the others. Refused with SecAgg+
  (the coordinator never sees one node's update there: the config says so).
* ``aggregate`` stages see the round's result less the global model, after the strategy's step
  (and central DP's noise, or SecAgg+'s unmask and dequantize, and distributed DP's noise), and
  return the delta to commit: the new model is global + that. They are post-processing of the
  round's release, so they compose with SecAgg+ and with either DP level. Any exception fails
  the round, naming the stage; the model and the strategy stay as the last committed round left
  them (:class:`~fedhive.server.aggregation.StrategyHost` rolls back).

Memory: folds run one at a time (the plain path's lock), and a transformed update is held in
one model-sized float64 buffer while a stage runs (an aggregate stage's likewise, beside the
round's new model); the strategy reads it back, cast to each tensor's dtype, as many times as it
needs (central DP reads twice). Without user stages the run's aggregator is not wrapped at all:
nothing changes on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fedhive.common.api.hooks import Block, Stage, contiguous
from fedhive.common.api.pipeline import UserStage, load_stages
from fedhive.common.config import ServerConfig
from fedhive.common.errors import AggregationError, InvalidUpdateError
from fedhive.common.wire.tensors import TensorSpec, from_float, peak_magnitude, raw_view, to_float
from fedhive.server.privacy.noise import SLICE
from fedhive.server.strategy.base import Aggregator, StagedUpdate, delta_pieces

log = logging.getLogger("fedhive.server")


class StageFailed(AggregationError):
    """A user stage failed on the round's result: ``reason`` is the round's failure, as is."""

    @property
    def reason(self) -> str:
        return str(self)


class _Failure(Exception):
    """An exception from one stage of a chain (``path`` None: from the source of the blocks)."""

    def __init__(self, path: str | None, exc: Exception) -> None:
        super().__init__(path, exc)
        self.path = path
        self.exc = exc


def _label(blocks: Callable[[], Iterable[Block]], path: str | None) -> Iterator[Block]:
    try:
        yield from blocks()
    except _Failure:
        raise
    except Exception as exc:
        raise _Failure(path, exc) from exc


def transform(
    stages: Sequence[UserStage], source: Iterable[Block], size: int, what: str
) -> np.ndarray:
    """``source`` (float64 blocks tiling ``[0, size)``) through fresh instances of ``stages``,
    gathered into one float64 buffer. Raises InvalidUpdateError naming the stage that failed
    (the stage's own message when it raised InvalidUpdateError); the source's errors as they are.
    """
    stream: Iterator[Block] = _label(lambda: source, None)
    path = ""
    for user in stages:
        path = user.path

        def step(user: UserStage = user, before: Iterator[Block] = stream) -> Iterable[Block]:
            stage: Stage = user.make()
            return stage.transform(before)

        stream = _label(step, path)
    out = np.empty(size, dtype=np.float64)
    try:
        try:
            for b in contiguous(stream, size):
                out[b.start : b.stop] = b.values
        except _Failure:
            raise
        except Exception as exc:  # after the last stage: its blocks do not tile the model
            raise _Failure(path, exc) from exc
        if not np.isfinite(out).all():
            raise _Failure(path, ValueError("the stages returned non-finite values"))
    except _Failure as failure:
        if failure.path is None:
            raise failure.exc from None
        if isinstance(failure.exc, InvalidUpdateError):
            raise InvalidUpdateError(
                f"pipeline stage {failure.path!r} refused {what}: {failure.exc}"
            ) from failure.exc
        log.warning(  # a bug in the stage: its traceback helps its author
            "pipeline stage %r failed on %s", failure.path, what, exc_info=failure.exc
        )
        raise InvalidUpdateError(
            f"pipeline stage {failure.path!r} failed on {what}: {failure.exc!r}"
        ) from failure.exc
    return out


def _float(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return to_float(np.ascontiguousarray(raw), spec.dtype).astype(np.float64)


class StagedDelta:
    """A transformed update for the wrapped strategy: global + ``delta`` in each tensor's dtype,
    produced in slices each time it is read (the strategy may read it more than once)."""

    def __init__(
        self,
        num_examples: int,
        specs: Sequence[TensorSpec],
        global_raw: Sequence[np.ndarray],
        delta: np.ndarray,
        by: str = "the pipeline stages",
    ) -> None:
        self.by = by
        self.num_examples = num_examples
        self.specs = specs
        self.global_raw = global_raw
        self.delta = delta
        self.offsets = np.cumsum([0] + [s.numel for s in specs]).tolist()
        self.peaks = [self._peak(i) for i in range(len(specs))]  # FedAvg's overflow bound

    def _raw(self, tensor: int) -> Iterator[np.ndarray]:
        spec, base = self.specs[tensor], self.offsets[tensor]
        current = self.global_raw[tensor]
        for lo in range(0, spec.numel, SLICE):
            hi = min(spec.numel, lo + SLICE)
            values = _float(current[lo:hi], spec) + self.delta[base + lo : base + hi]
            with np.errstate(over="ignore", invalid="ignore"):
                yield from_float(values, spec.dtype)

    def _peak(self, tensor: int) -> float:
        spec = self.specs[tensor]
        peak = 0.0
        for raw in self._raw(tensor):
            peak = max(peak, peak_magnitude(raw_view(raw), spec.dtype))
        if not np.isfinite(peak):
            raise InvalidUpdateError(
                f"the update returned by {self.by} does not fit tensor {spec.name!r} "
                f"({spec.dtype}): it holds non-finite values once cast"
            )
        return peak

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        return (raw_view(raw) for raw in self._raw(tensor))


class CoordinatorStages:
    """The run's aggregator with the user's stages around it: ``update`` stages before each
    fold, ``aggregate`` stages on the round's result. Every other hook is the inner's."""

    def __init__(
        self, inner: Aggregator, update: Sequence[UserStage], aggregate: Sequence[UserStage]
    ) -> None:
        self.inner = inner
        self.update_stages = list(update)
        self.aggregate_stages = list(aggregate)
        self.specs: list[TensorSpec] = []
        self._global: Sequence[np.ndarray] | None = None

    def __getattr__(self, name: str) -> Any:  # select, expect, configure, needs_updates ...
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def size(self) -> int:
        return sum(s.numel for s in self.specs)

    # -------------------------------------------------------------- the round
    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        self.specs = list(specs)
        self._global = global_raw
        self.inner.begin(specs, global_raw)

    def fold(self, update: StagedUpdate) -> None:
        if not self.update_stages:
            self.inner.fold(update)
            return
        current = self._global
        if current is None:
            raise AggregationError("the update stages need the round's global model")
        delta = transform(
            self.update_stages, self._update_deltas(update, current), self.size, "the update"
        )
        by = "pipeline stage(s) " + ", ".join(repr(s.path) for s in self.update_stages)
        staged = StagedDelta(update.num_examples, self.specs, current, delta, by)
        del delta
        self.inner.fold(staged)

    def _update_deltas(
        self, update: StagedUpdate, current: Sequence[np.ndarray]
    ) -> Iterator[Block]:
        start = 0
        for index, spec in enumerate(self.specs):
            for pos, delta in delta_pieces(update, index, spec, current[index]):
                yield Block(start + pos, delta)
            start += spec.numel

    def finalize(self) -> list[np.ndarray]:
        new = self.inner.finalize()
        current = self._global
        if current is None:
            raise AggregationError("the aggregate stages need the round's global model")
        return self.after(self.specs, new, current)

    def after(
        self,
        specs: Sequence[TensorSpec],
        new: Sequence[np.ndarray],
        current: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """The round's new model (raw, one flat array per tensor) through the aggregate stages:
        global + what they return."""
        if not self.aggregate_stages:
            return list(new)
        specs = list(specs)

        def deltas() -> Iterator[Block]:
            start = 0
            for index, spec in enumerate(specs):
                flat_new = np.asarray(new[index]).reshape(-1)
                for lo in range(0, spec.numel, SLICE):
                    hi = min(spec.numel, lo + SLICE)
                    yield Block(
                        start + lo,
                        _float(flat_new[lo:hi], spec) - _float(current[index][lo:hi], spec),
                    )
                start += spec.numel

        size = sum(s.numel for s in specs)
        try:
            delta = transform(self.aggregate_stages, deltas(), size, "the round's aggregate")
        except InvalidUpdateError as exc:
            raise StageFailed(str(exc)) from exc
        out: list[np.ndarray] = []
        start = 0
        for index, spec in enumerate(specs):
            values = delta[start : start + spec.numel]
            values += _float(current[index][:], spec)
            with np.errstate(over="ignore", invalid="ignore"):
                out.append(from_float(values, spec.dtype))
            start += spec.numel
        return out

    def from_mean(
        self, specs: Sequence[TensorSpec], mean: list[np.ndarray], global_raw: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """A SecAgg+ round's mean through the strategy's own step (if it has one), then the
        aggregate stages."""
        step = getattr(self.inner, "from_mean", None)
        new = step(specs, mean, global_raw) if step is not None else mean
        return self.after(specs, new, global_raw)

    def abandon(self) -> None:
        drop = getattr(self.inner, "abandon", None)
        if drop is not None:
            drop()

    def state(self) -> dict[str, object]:
        return self.inner.state()

    def restore(self, state: dict[str, object]) -> None:
        self.inner.restore(state)


def inner_of(aggregator: Aggregator) -> Aggregator:
    """The aggregator under the user's stages (itself when it has none)."""
    return aggregator.inner if isinstance(aggregator, CoordinatorStages) else aggregator


def wrap_stages(config: ServerConfig, aggregator: Aggregator) -> Aggregator:
    """The run's aggregator with the ``[pipeline]`` stages around it (imported and checked now,
    before the run exists); ``aggregator`` itself when the run names none."""
    pipeline = config.pipeline
    if pipeline is None or not (pipeline.update or pipeline.aggregate):
        return aggregator
    update = load_stages(pipeline.update, coordinator=True)
    aggregate = load_stages(pipeline.aggregate, coordinator=True)
    return CoordinatorStages(aggregator, update, aggregate)
