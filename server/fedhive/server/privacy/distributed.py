"""Distributed DP on the coordinator: the unmasked, already-noised sum becomes the new model.

The unmasked words are the survivors' quantized, noised deltas summed mod 2^32: word 0 counts
them (each node's weight is 1), word ``i + 1`` is element ``i``. The count must equal the
survivors SecAgg+ saw (a node that claimed another weight would skew the mean: the round is
abandoned). Each element is read in the plan's window, turned into the mean delta and added to
the model the round started from; the record gets what the survivors' noise delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.api.hooks import Block, contiguous
from fedhive.common.data.safetensors_io import SafetensorsFile
from fedhive.common.privacy.distributed import DistributedPlan, decode, round_privacy
from fedhive.common.secagg.stages import COUNT_WORDS
from fedhive.common.wire.tensors import DTYPES, TensorSpec, from_float, to_float


def finalize_distributed(
    dp: DistributedPlan,
    specs: Sequence[TensorSpec],
    blocks: Iterable[Block],
    survivors: int,
    base: Path,
    alive: int,
    history: Iterable[Mapping[str, Any]],
    delta: float,
) -> tuple[list[np.ndarray], int, dict[str, Any]]:
    """The new model (one flat array per spec), the survivors, and ``privacy["distributed"]``."""
    elements = sum(s.numel for s in specs)
    model = SafetensorsFile(base)
    current = [
        to_float(buf, s.dtype).reshape(-1) for s, buf in zip(specs, model.buffers(), strict=True)
    ]
    out = [np.empty(s.numel, dtype=DTYPES[s.dtype].storage) for s in specs]
    bounds = np.cumsum([0] + [s.numel for s in specs]).tolist()
    for b in contiguous(blocks, elements + COUNT_WORDS):
        values, start = b.values, b.start - COUNT_WORDS
        if b.start == 0:
            count = int(values[0])
            if count != survivors:
                raise ValueError(
                    f"the unmasked count word says {count} node(s), but {survivors} survived: "
                    f"a node sent a weight other than 1"
                )
            values, start = values[COUNT_WORDS:], 0
        if values.size == 0:
            continue
        mean = decode(values, survivors, dp)
        stop = start + mean.size
        for i, spec in enumerate(specs):
            lo, hi = max(start, bounds[i]), min(stop, bounds[i + 1])
            if lo < hi:
                a, z = lo - bounds[i], hi - bounds[i]
                part = mean[lo - start : hi - start] + current[i][a:z]
                out[i][a:z] = from_float(part, spec.dtype)
    return out, survivors, round_privacy(dp, survivors, alive, history, delta)
