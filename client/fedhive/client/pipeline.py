"""The node's update pipeline (:mod:`fedhive.common.api.pipeline`) as its runtime builds it: the
stages of a secure round, and a plain round's update through the user's float stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedhive.client.secagg import SecureTask, model_blocks
from fedhive.common.api.hooks import Stage, gather, run
from fedhive.common.api.pipeline import DeltaStage, RebaseStage, UserStage, split
from fedhive.common.errors import ConfigError
from fedhive.common.privacy.distributed import ClipDeltaStage
from fedhive.common.secagg.stages import PadStage, QuantizeStage
from fedhive.common.wire.tensors import TensorSpec, from_float, raw_view, tensor_bytes, to_float


def secure_stages(
    task: SecureTask,
    pad: np.ndarray,
    weight: int,
    rng: np.random.Generator,
    base: np.ndarray | None,
    floats: Sequence[Stage] = (),
    words: Sequence[Stage] = (),
) -> list[Stage]:
    """The node's pipeline for a secure round (:mod:`fedhive.common.api.pipeline`): with distributed
    DP ``delta -> floats -> dp clip -> quantize -> words -> pad`` (weight 1; the pad already holds
    the noise, :class:`KeyExchange`: the same sum as a noise stage before the mask);
    otherwise ``[delta -> floats -> rebase] -> quantize -> [words] -> pad`` (``base``, the
    downloaded model as flat floats, needed for DP or float stages)."""
    front: list[Stage] = []
    if task.dp_variance is not None and task.dp_clip is not None:
        if base is None:
            raise ConfigError("distributed DP needs the model this node downloaded")
        front = [DeltaStage(base), *floats, ClipDeltaStage(task.dp_clip)]
        weight = 1
    elif floats:
        if base is None:
            raise ConfigError("float pipeline stages need the model this node downloaded")
        front = [DeltaStage(base), *floats, RebaseStage(base)]
    if not words:
        return [*front, QuantizeStage(task.quant, weight, rng, pad)]
    return [*front, QuantizeStage(task.quant, weight, rng), *words, PadStage(pad)]


def flat_values(specs: Sequence[TensorSpec], state: Mapping[str, Any]) -> np.ndarray:
    """The model's exchanged values as one flat float64 array (a copy)."""
    parts = [
        to_float(tensor_bytes(t), spec.dtype).reshape(-1)
        for spec, t in zip(specs, state.values(), strict=True)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def through_stages(
    specs: Sequence[TensorSpec],
    state: Mapping[str, Any],
    base: np.ndarray | None,
    stages: Sequence[UserStage],
) -> list[memoryview]:
    """A plain round's update through the user's float stages (on the delta from the
    downloaded model ``base``, which is added back): the tensors' raw words."""
    if base is None:  # pragma: no cover - the node keeps it for a pipeline
        raise ConfigError("the pipeline needs the downloaded model")
    floats, _ = split(stages, secure=False)
    values = model_blocks(
        to_float(tensor_bytes(t), spec.dtype) for spec, t in zip(specs, state.values(), strict=True)
    )
    flat = gather(
        run([DeltaStage(base), *floats, RebaseStage(base)], values), base.size, np.float64
    )
    out, start = [], 0
    for spec in specs:
        out.append(raw_view(from_float(flat[start : start + spec.numel], spec.dtype)))
        start += spec.numel
    return out
