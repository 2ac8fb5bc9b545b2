"""SecAgg+ cost in one process: the sans-I/O machines driven directly (no network).

    python benchmarks/secagg.py                 # N=10, P in {1M, 10M}, 0 and 1 dropout
    python benchmarks/secagg.py --nodes 5 --params 100000

Prints one JSON line per configuration: per-node key set-up, quantization and masking times
(medians over the nodes), the coordinator's fold, secret reconstruction and unmasking times, and
the bytes a node uploads (masked words + protocol messages) against the float32 size of the model.
Wall-clock figures of this machine, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhive.common.api.hooks import Block, blocks_of, run
from fedhive.common.secagg import Graph, NodeSecAgg, QuantConfig, ServerSecAgg
from fedhive.common.secagg.stages import DequantizeStage, MaskStage, QuantizeStage, masked_words
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.strategy import FedAvg

CHUNK_WORDS = 1 << 18  # 1 MiB chunks, as the transport sends


def advert_bytes(advert) -> int:
    return len(advert.node) + 8 + len(advert.c_pk) + len(advert.s_pk) + 32 + 64


@dataclass
class _Update:
    num_examples: int
    raw: memoryview

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        step = CHUNK_WORDS * 4
        for start in range(0, len(self.raw), step):
            yield self.raw[start : start + step]


def plain_fold_s(model: np.ndarray) -> float:
    """Seconds the plain FedAvg fold takes for one update of the same model (the baseline)."""
    fedavg = FedAvg()
    fedavg.begin([TensorSpec("w", "float32", (model.size,))], None)
    update = _Update(100, model.data.cast("B"))
    t0 = time.perf_counter()
    fedavg.fold(update)
    return time.perf_counter() - t0


def bench(nodes: int, params: int, dropouts: int, seed: int) -> dict:
    cfg = QuantConfig(clip=4.0, bits=16, max_weight=1024)
    cfg.check(nodes)
    ids = [f"node-{i:03d}" for i in range(nodes)]
    graph = Graph.build(ids, seed=seed)
    identities = {u: Ed25519PrivateKey.generate() for u in ids}
    directory = {u: k.public_key() for u, k in identities.items()}
    words = masked_words(params)
    machines = {u: NodeSecAgg(u, identities[u], directory, graph, 1, words) for u in ids}
    server = ServerSecAgg(graph, 1, words, directory, chunk_words=CHUNK_WORDS)
    sent = {u: 0 for u in ids}
    setup: dict[str, float] = {u: 0.0 for u in ids}

    for u in ids:
        t0 = time.perf_counter()
        advert = machines[u].advertise()
        setup[u] += time.perf_counter() - t0
        sent[u] += advert_bytes(advert)
        server.receive_advert(advert)
    adverts = server.close_adverts()
    for u in ids:
        t0 = time.perf_counter()
        sealed = machines[u].share_keys(adverts[u])
        setup[u] += time.perf_counter() - t0
        sent[u] += sum(len(m.sealed) + len(m.receiver) for m in sealed)
        server.receive_shares(u, sealed)
    routed = server.close_shares()
    for u in ids:
        t0 = time.perf_counter()
        machines[u].receive_shares(routed[u])
        setup[u] += time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    model = rng.normal(0, 0.5, params).astype(np.float32)
    quant_s, mask_s, fold_s = [], [], 0.0
    survivors = ids[dropouts:]
    for i, u in enumerate(survivors):
        stream = blocks_of(model, CHUNK_WORDS)
        q_stage = QuantizeStage(cfg, 100 + i, np.random.default_rng(i))
        t0 = time.perf_counter()
        quantized = list(run([q_stage], stream))
        t1 = time.perf_counter()
        masked = list(run([MaskStage(machines[u])], quantized))
        t2 = time.perf_counter()
        for block in masked:
            server.masked_chunk(u, block.start, block.values)
            sent[u] += block.values.nbytes
        server.masked_end(u)
        fold_s += time.perf_counter() - t2
        quant_s.append(t1 - t0)
        mask_s.append(t2 - t1)
        del quantized, masked
    request = server.close_masked()
    for u in survivors:
        reply = machines[u].unmask(request)
        sent[u] += sum(len(s.signed.share) + len(s.signed.signature) + 16 for s in reply.shares)
        server.receive_unmask(reply)
    t0 = time.perf_counter()
    server.prepare_unmask()
    t1 = time.perf_counter()
    unmask_s, max_error = 0.0, 0.0
    dequantize = DequantizeStage(cfg)
    expected = np.clip(model, -cfg.clip, cfg.clip).astype(np.float64)
    for start, chunk in server.masked_sum_blocks():
        t2 = time.perf_counter()
        server.unmask_block(start, chunk)
        unmask_s += time.perf_counter() - t2
        for block in dequantize.transform([Block(start, chunk)]):
            err = np.abs(block.values - expected[block.start : block.stop])
            max_error = max(max_error, float(err.max(initial=0.0)))
    upload = statistics.median(sent[u] for u in survivors)
    return {
        "bench": "secagg",
        "nodes": nodes,
        "params": params,
        "dropouts": dropouts,
        "degree": graph.degree,
        "threshold": graph.threshold,
        "node_setup_s": round(statistics.median(setup.values()), 4),
        "node_quantize_s": round(statistics.median(quant_s), 4),
        "node_mask_s": round(statistics.median(mask_s), 4),
        "coord_fold_s_per_node": round(fold_s / len(survivors), 4),
        "plain_fedavg_fold_s_per_node": round(plain_fold_s(model), 4),
        "coord_reconstruct_s": round(t1 - t0, 4),
        "coord_unmask_s": round(unmask_s, 4),
        "upload_bytes_per_node": int(upload),
        "float32_bytes": params * 4,
        "upload_ratio": round(upload / (params * 4), 5),
        "total_weight": dequantize.total_weight,
        "max_abs_error": max_error,
        "error_bound": len(survivors) * cfg.step / dequantize.total_weight,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dropouts", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for params in args.params:
        for dropouts in args.dropouts:
            print(json.dumps(bench(args.nodes, params, dropouts, args.seed)), flush=True)


if __name__ == "__main__":
    main()
