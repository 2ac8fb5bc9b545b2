"""SecAgg+ as hook stages (:mod:`fedhive.common.api.hooks`).

Node: ``[QuantizeStage, MaskStage]`` turns float blocks over elements ``[0, P)`` into masked
uint32 blocks over words ``[0, P + 1)``: word 0 is the example count, word ``i + 1`` is element
``i``. ``[QuantizeStage, PadStage]`` gives the same words from a mask computed beforehand
(:meth:`NodeSecAgg.pad`, while the node trains). Quantization clips to ``[-clip, clip]``
itself; :class:`ClipStage` is for pipelines that clip without quantizing. The count comes first
so that the coordinator learns the summed weight before the first value. Coordinator:
:func:`folded_blocks` (the folded, still masked sum) then ``[UnmaskStage, DequantizeStage]``
gives float64 blocks of the weighted mean over ``[0, P)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fedhive.common.api.hooks import Block
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.quantize import QuantConfig, dequantize, quantize
from fedhive.common.secagg.server import ServerSecAgg
from fedhive.common.wire.tensors import TensorSpec

COUNT_WORDS = 1
MASKED_TENSOR = "secagg.masked"


def masked_words(elements: int) -> int:
    """Words a node uploads for a model of ``elements`` values (the count word included)."""
    return elements + COUNT_WORDS


def masked_spec(elements: int) -> TensorSpec:
    """The upload of a secure round: one int32 tensor of the masked words (the wire has no
    uint32; the bits are the same)."""
    return TensorSpec(MASKED_TENSOR, "int32", (masked_words(elements),))


class ClipStage:
    """Clip float values to ``[-clip, clip]`` (a copy: the caller's arrays stay untouched)."""

    name = "clip"

    def __init__(self, clip: float) -> None:
        self.clip = clip

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, np.clip(b.values, -self.clip, self.clip))


class QuantizeStage:
    """Weighted stochastic quantization; emits the weight as word 0, element i as word i + 1.

    With ``pad`` (a node's precomputed whole mask, :meth:`NodeSecAgg.pad`) the words are added
    into it in the same pass, and the blocks are masked words, views of the pad: the same as
    ``[QuantizeStage(cfg, weight, rng), PadStage(pad)]``, without an array of quantized words.
    """

    name = "quantize"

    def __init__(
        self,
        cfg: QuantConfig,
        weight: int,
        rng: np.random.Generator,
        pad: np.ndarray | None = None,
    ) -> None:
        cfg.check_weight(weight)
        if pad is not None and (pad.dtype != np.uint32 or pad.ndim != 1):
            raise ValueError("a pad is a flat uint32 array")
        self.cfg = cfg
        self.weight = weight
        self.rng = rng
        self.pad = pad

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        pad = self.pad
        if pad is None:
            yield Block(0, np.array([self.weight], dtype=np.uint32))
            for b in blocks:
                words = quantize(b.values, self.weight, self.cfg, self.rng)
                yield Block(b.start + COUNT_WORDS, words)
            return
        pad[:COUNT_WORDS] += np.uint32(self.weight)
        yield Block(0, pad[:COUNT_WORDS])
        for b in blocks:
            start = b.start + COUNT_WORDS
            if b.start < 0 or start + b.values.size > pad.size:
                raise ValueError(f"block [{b.start}, {b.stop}) outside the pad's elements")
            part = pad[start : start + b.values.size]
            yield Block(start, quantize(b.values, self.weight, self.cfg, self.rng, add_to=part))


class MaskStage:
    """Mask each uint32 block in place with the node's SecAgg+ masks."""

    name = "mask"

    def __init__(self, machine: NodeSecAgg) -> None:
        self.machine = machine

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, self.machine.mask(b.start, b.values))


class PadStage:
    """Add uint32 blocks into a precomputed whole mask (:meth:`NodeSecAgg.pad`), mod 2^32: the
    masked words land in the pad's own memory (no further copy of the update)."""

    name = "pad"

    def __init__(self, pad: np.ndarray) -> None:
        if pad.dtype != np.uint32 or pad.ndim != 1:
            raise ValueError("a pad is a flat uint32 array")
        self.pad = pad

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            if b.start < 0 or b.stop > self.pad.size:
                raise ValueError(f"block [{b.start}, {b.stop}) outside the {self.pad.size} words")
            part = self.pad[b.start : b.stop]
            np.add(part, b.values, out=part)
            yield Block(b.start, part)


def folded_blocks(machine: ServerSecAgg) -> Iterator[Block]:
    """The coordinator's folded sum as blocks (call after ``prepare_unmask``)."""
    for start, words in machine.masked_sum_blocks():
        yield Block(start, words)


class UnmaskStage:
    """Remove the survivors' self masks and the dropped nodes' pairwise masks, block by block."""

    name = "unmask"

    def __init__(self, machine: ServerSecAgg) -> None:
        self.machine = machine

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, self.machine.unmask_block(b.start, b.values))


class DequantizeStage:
    """Word 0 is the summed weight; word i + 1 becomes element i of the weighted mean."""

    name = "dequantize"

    def __init__(self, cfg: QuantConfig) -> None:
        self.cfg = cfg
        self.total_weight = 0

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            values = b.values
            if b.start == 0:
                self.total_weight = int(values[0])
                values = values[COUNT_WORDS:]
                if values.size == 0:
                    continue
            elif self.total_weight <= 0:
                raise ValueError("the weight word must come first")
            start = max(b.start - COUNT_WORDS, 0)
            yield Block(start, dequantize(values, self.total_weight, self.cfg))
