"""Drive a whole SecAgg+ round in one process: the sans-I/O machines fed with each other's output.

``drops`` maps a step to the nodes that vanish *before* sending that step's message:
``advertise`` (never advertise), ``share`` (advertise only), ``masked`` (no masked input),
``unmask`` (masked input, then silence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import RoundKeys
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.server import ServerSecAgg

STEPS = ("advertise", "share", "masked", "unmask")
ROUND = 7


def node_ids(n: int) -> list[str]:
    return [f"node-{i:02d}" for i in range(n)]


def fixed_identity(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)


def fixed_keys(i: int) -> RoundKeys:
    """Deterministic round keys (tests only: real rounds use RoundKeys.generate())."""
    return RoundKeys(
        X25519PrivateKey.from_private_bytes(bytes([0x40 + i]) * 32),
        X25519PrivateKey.from_private_bytes(bytes([0x80 + i]) * 32),
        bytes([0xC0 + i]) * 32,
    )


@dataclass
class Federation:
    graph: Graph
    words: int
    identities: dict[str, Ed25519PrivateKey]
    directory: dict[str, Ed25519PublicKey]
    nodes: dict[str, NodeSecAgg]
    server: ServerSecAgg
    chunk: int = 37
    dropped: set[str] = field(default_factory=set)


def federation(
    n: int,
    words: int,
    *,
    degree: int | None = None,
    threshold: int | None = None,
    seed: int = 1,
    chunk_words: int = 64,
    deterministic: bool = False,
) -> Federation:
    ids = node_ids(n)
    graph = Graph.build(ids, seed=seed, degree=degree, threshold=threshold)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    nodes = {
        u: NodeSecAgg(
            u,
            identities[u],
            directory,
            graph,
            ROUND,
            words,
            keys=fixed_keys(i) if deterministic else None,
        )
        for i, u in enumerate(ids)
    }
    server = ServerSecAgg(graph, ROUND, words, directory, chunk_words=chunk_words)
    return Federation(graph, words, identities, directory, nodes, server)


def run_round(
    fed: Federation,
    inputs: Mapping[str, np.ndarray],
    drops: Mapping[str, Sequence[str]] | None = None,
    chunk: int = 37,
) -> np.ndarray:
    """Run every step; return the unmasked sum (uint32). Protocol errors propagate."""
    drops = drops or {}
    gone: set[str] = set()

    def alive(step: str) -> list[str]:
        gone.update(drops.get(step, ()))
        return [u for u in fed.nodes if u not in gone]

    srv = fed.server
    for u in alive("advertise"):
        srv.receive_advert(fed.nodes[u].advertise())
    adverts = srv.close_adverts()
    for u in alive("share"):
        srv.receive_shares(u, fed.nodes[u].share_keys(adverts[u]))
    routed = srv.close_shares()
    for u in alive("masked"):
        node = fed.nodes[u]
        node.receive_shares(routed[u])
        words = inputs[u].copy()
        for start in range(0, words.size, chunk):
            srv.masked_chunk(u, start, node.mask(start, words[start : start + chunk]))
        srv.masked_end(u)
    request = srv.close_masked()
    for u in alive("unmask"):
        srv.receive_unmask(fed.nodes[u].unmask(request))
    fed.dropped = gone
    return srv.finish()


def plain_sum(inputs: Mapping[str, np.ndarray], members: Sequence[str]) -> np.ndarray:
    """The sum mod 2^32 of the members' words, computed without any masking."""
    total = np.zeros_like(next(iter(inputs.values())), dtype=np.uint64)
    for u in members:
        total += inputs[u]
    return (total % (1 << 32)).astype(np.uint32)
