"""Hooks on the path of an update: stages that transform a stream of blocks.

An update travels as a stream of :class:`Block` s: consecutive slices of the flat element index
of the payload (every tensor's elements, concatenated in spec order), never the whole model at
once. A *stage* turns one block stream into another, lazily, so every stage keeps memory
O(block) and works for models of any size::

    node:         values -> [clip] -> [quantize] -> [mask]  -> upload, folded by the coordinator
    coordinator:  folded sum -> [unmask] -> [dequantize]     -> the new global model

Plain FedAvg is the pipeline with no stages on either side. Secure aggregation is
``node=[Clip, Quantize, Mask]``, ``coordinator=[Unmask, Dequantize]``
(:mod:`fedhive.common.secagg.stages`). The node's pipeline is chosen by configuration
(:mod:`fedhive.common.api.pipeline`: distributed DP's clip and noise, SecAgg+'s quantization and
mask, and user stages named by import path in the node's ``[pipeline]``); the round engine only
calls :func:`run`. The coordinator runs user float stages of its own, named in its run config's
``[pipeline]``: ``update`` stages on each update's delta before the strategy folds it,
``aggregate`` stages on the round's result before it is committed
(:mod:`fedhive.server.pipeline`).

A stage may change the element type (float -> uint32) and the index space (a stage may prepend
or drop elements, as quantization does with the example count), but it must emit blocks in
increasing, contiguous ``start`` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Block:
    """Elements ``[start, start + len(values))`` of a flat stream (``values`` is 1-D)."""

    start: int
    values: np.ndarray

    @property
    def stop(self) -> int:
        return self.start + int(self.values.size)


@runtime_checkable
class Stage(Protocol):
    """One transformation of a block stream (a node stage or a coordinator stage)."""

    name: str

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        """Lazily map ``blocks`` to the output stream (a generator, O(block) memory)."""
        ...


def run(stages: Sequence[Stage], blocks: Iterable[Block]) -> Iterator[Block]:
    """``blocks`` through every stage in order; with no stages, ``blocks`` unchanged."""
    stream: Iterable[Block] = blocks
    for stage in stages:
        stream = stage.transform(stream)
    return iter(stream)


def blocks_of(values: np.ndarray, block: int, *, start: int = 0) -> Iterator[Block]:
    """Cut a flat array into blocks of at most ``block`` elements (views, no copy)."""
    if block <= 0:
        raise ValueError("block size must be positive")
    flat = values.reshape(-1)
    for offset in range(0, flat.size, block):
        yield Block(start + offset, flat[offset : offset + block])


def contiguous(blocks: Iterable[Block], size: int) -> Iterator[Block]:
    """Pass ``blocks`` through, checking that they tile ``[0, size)`` in order."""
    expected = 0
    for b in blocks:
        if b.start != expected or b.stop > size:
            raise ValueError(f"block [{b.start}, {b.stop}) out of order (expected {expected})")
        expected = b.stop
        yield b
    if expected != size:
        raise ValueError(f"stream ended at {expected} of {size} elements")


def gather(blocks: Iterable[Block], size: int, dtype: np.dtype | type) -> np.ndarray:
    """Assemble a contiguous stream of ``size`` elements (tests and small models)."""
    out = np.empty(size, dtype=dtype)
    for b in contiguous(blocks, size):
        out[b.start : b.stop] = b.values
    return out
