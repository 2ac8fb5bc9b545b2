"""SecAgg+ through the hook pipeline; what the coordinator sees of one node looks uniform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from fedhive.common.api.hooks import Block, Stage, blocks_of, gather, run
from fedhive.common.secagg.quantize import QuantConfig, quantize
from fedhive.common.secagg.stages import (
    ClipStage,
    DequantizeStage,
    MaskStage,
    PadStage,
    QuantizeStage,
    UnmaskStage,
    folded_blocks,
    masked_words,
)
from tests.unit.secagg.harness import federation, node_ids

CFG = QuantConfig(clip=2.0, bits=12, max_weight=100)


def advance_to_masking(fed) -> None:
    srv = fed.server
    for u in fed.nodes:
        srv.receive_advert(fed.nodes[u].advertise())
    adverts = srv.close_adverts()
    for u in fed.nodes:
        srv.receive_shares(u, fed.nodes[u].share_keys(adverts[u]))
    routed = srv.close_shares()
    for u in fed.nodes:
        fed.nodes[u].receive_shares(routed[u])


def test_plain_pipeline_is_the_identity() -> None:
    values = np.arange(10, dtype=np.float32)
    out = list(run([], blocks_of(values, 3)))
    assert np.array_equal(gather(out, 10, np.float32), values)
    assert [b.start for b in out] == [0, 3, 6, 9]


def test_secagg_stages_are_stages() -> None:
    assert isinstance(ClipStage(1.0), Stage)
    assert isinstance(DequantizeStage(CFG), Stage)


@pytest.mark.parametrize("drop", [None, "node-02"])
def test_pipeline_gives_the_weighted_mean_of_the_survivors(drop: str | None) -> None:
    # Prepare: 5 nodes with different weights; maybe one vanishes before its masked input.
    n, elements = 5, 257
    fed = federation(n, masked_words(elements), chunk_words=50)
    advance_to_masking(fed)
    rng = np.random.default_rng(0)
    values = {u: rng.normal(0, 1, elements).astype(np.float32) for u in node_ids(n)}
    weights = {u: 10 * (i + 1) for i, u in enumerate(node_ids(n))}
    survivors = [u for u in node_ids(n) if u != drop]
    srv = fed.server
    # Execute: node pipelines stream blocks into the coordinator's fold.
    for u in survivors:
        stages = [
            ClipStage(CFG.clip),
            QuantizeStage(CFG, weights[u], np.random.default_rng(1)),
            MaskStage(fed.nodes[u]),
        ]
        for block in run(stages, blocks_of(values[u], 40)):
            srv.masked_chunk(u, block.start, block.values)
        srv.masked_end(u)
    request = srv.close_masked()
    for u in survivors:
        srv.receive_unmask(fed.nodes[u].unmask(request))
    srv.prepare_unmask()
    mean = gather(
        run([UnmaskStage(srv), DequantizeStage(CFG)], folded_blocks(srv)), elements, np.float64
    )
    # Assert
    total = sum(weights[u] for u in survivors)
    exact = (
        sum(weights[u] * np.clip(values[u], -2, 2).astype(np.float64) for u in survivors) / total
    )
    assert np.max(np.abs(mean - exact)) <= len(survivors) * CFG.step / total


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_unmasked_sum_equals_the_plain_quantized_sum(workers: int) -> None:
    # Prepare: the same quantization (same rng seeds) with and without masking; workers=0 is
    # finish(), else unmasked_blocks with that many threads (64-word blocks: several).
    n, elements = 4, 100
    fed = federation(n, masked_words(elements))
    advance_to_masking(fed)
    values = {u: np.linspace(-3, 3, elements) * (i + 1) for i, u in enumerate(node_ids(n))}
    plain = np.zeros(masked_words(elements), dtype=np.uint64)
    # Execute
    for i, u in enumerate(node_ids(n)):
        words = gather(
            run([QuantizeStage(CFG, 7 + i, np.random.default_rng(i))], blocks_of(values[u], 33)),
            masked_words(elements),
            np.uint32,
        )
        plain += words
        fed.server.masked_chunk(u, 0, fed.nodes[u].mask(0, words.copy()))
        fed.server.masked_end(u)
    request = fed.server.close_masked()
    for u in node_ids(n):
        fed.server.receive_unmask(fed.nodes[u].unmask(request))
    if workers:
        fed.server.prepare_unmask()
        blocks = [Block(start, words) for start, words in fed.server.unmasked_blocks(workers)]
        total = gather(blocks, masked_words(elements), np.uint32)
    else:
        total = fed.server.finish()
    # Assert
    assert np.array_equal(total, plain.astype(np.uint32))
    assert total[0] == sum(7 + i for i in range(n))


def test_a_precomputed_pad_masks_exactly_as_block_by_block_masking() -> None:
    # Prepare: one node; the same quantized words masked both ways (blocks cut unevenly)
    n, elements = 3, 1000
    fed = federation(n, masked_words(elements), deterministic=True)
    advance_to_masking(fed)
    node = fed.nodes[node_ids(n)[0]]
    values = np.linspace(-3, 3, elements)

    def quantized():
        return run([QuantizeStage(CFG, 9, np.random.default_rng(5))], blocks_of(values, 77))

    # Execute
    by_block = gather(run([MaskStage(node)], quantized()), masked_words(elements), np.uint32)
    pad = node.pad()
    out = list(run([PadStage(pad)], quantized()))
    fused_pad = node.pad()
    fused = list(
        run([QuantizeStage(CFG, 9, np.random.default_rng(5), fused_pad)], blocks_of(values, 77))
    )
    # Assert: same words three ways; the pad's own memory holds them (no further copy)
    assert np.array_equal(pad, by_block) and np.array_equal(fused_pad, by_block)
    assert all(np.shares_memory(b.values, pad) for b in out)
    assert all(np.shares_memory(b.values, fused_pad) for b in fused)


def test_pad_stage_refuses_blocks_outside_the_pad() -> None:
    stage = PadStage(np.zeros(10, dtype=np.uint32))
    with pytest.raises(ValueError, match="outside the 10 words"):
        list(stage.transform([Block(8, np.zeros(3, dtype=np.uint32))]))


def chi_square_bytes(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_masked_words_of_one_node_look_uniform() -> None:
    # Prepare: fixed keys (deterministic); a very non-uniform input: quantized zeros.
    n, elements = 3, 1 << 16
    fed = federation(n, masked_words(elements), deterministic=True)
    advance_to_masking(fed)
    node = fed.nodes[node_ids(n)[0]]
    words = quantize(np.zeros(elements + 1), 1, CFG, np.random.default_rng(0))
    critical = chi2.ppf(0.999, df=255)
    # Execute
    masked = node.mask(0, words.copy())
    # Assert: bytes and the top byte of each word pass; the unmasked input fails (control).
    assert chi_square_bytes(masked) < critical
    assert chi_square_bytes((masked >> 24).astype(np.uint8)) < critical
    assert chi_square_bytes(words) > critical


def test_dequantize_needs_the_weight_first() -> None:
    stage = DequantizeStage(CFG)
    with pytest.raises(ValueError, match="weight word"):
        list(stage.transform([Block(1, np.zeros(3, dtype=np.uint32))]))
