"""The coordinator side of SecAgg+: a sans-I/O state machine that only ever sees the sum.

Drive it with the nodes' messages, in order (each ``close_*`` ends a step with whoever arrived;
the rest count as dropped)::

    machine = ServerSecAgg(graph, round_, words, directory)
    machine.receive_advert(advert) ...;        to_nodes = machine.close_adverts()
    machine.receive_shares(node, sealed) ...;  to_nodes = machine.close_shares()
    machine.masked_chunk(node, start, words) ...; machine.masked_end(node) ...
    request = machine.close_masked()
    machine.receive_unmask(reply) ...;         total = machine.finish()   # uint32 sums

Masked chunks are folded into one running uint32 sum as they come (wrap-around add), so memory is
O(model) whatever the number of nodes. A folded chunk cannot be taken back: the transport must
stage a node's stream and feed it only once complete (as the plain path does); a stream left
half-fed abandons the round. Up to the threshold, dropouts at any step are recovered exactly:
self masks of survivors and pairwise masks of dropped nodes are regenerated from reconstructed
secrets, chunk by chunk. A message that fails verification raises
:class:`~fedhive.common.errors.SecAggAuthError` naming its sender and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.common.errors import SecAggAbortedError, SecAggAuthError
from fedhive.common.secagg import keys as K
from fedhive.common.secagg import shamir
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.messages import (
    SealedShares,
    UnmaskReply,
    UnmaskRequest,
    share_signed_bytes,
)
from fedhive.common.secagg.node import MASK_PURPOSE
from fedhive.common.secagg.prg import add_masks

UNMASK_CHUNK_WORDS = 1 << 18


class ServerSecAgg:
    def __init__(
        self,
        graph: Graph,
        round_: int,
        words: int,
        directory: Mapping[str, Ed25519PublicKey],
        *,
        chunk_words: int = UNMASK_CHUNK_WORDS,
    ) -> None:
        self.graph = graph
        self.round = round_
        self.words = words
        self.chunk_words = chunk_words
        self._directory = directory
        self._stage = "adverts"
        self.adverts: dict[str, K.KeyAdvert] = {}
        self._sealed: dict[str, list[SealedShares]] = {}
        self.shared: set[str] = set()  # U2
        self._offsets: dict[str, int] = {}
        self.survivors: set[str] = set()  # U3
        self._revealed: dict[str, dict[str, list[shamir.Share]]] = {}  # owner -> kind -> shares
        self.unmasked: set[str] = set()  # U4
        self._sum: np.ndarray | None = None
        self._unmask_keys: list[tuple[bytes, bool]] = []

    def _expect(self, stage: str, node: str | None = None) -> None:
        if self._stage != stage:
            raise SecAggAbortedError(
                f"secagg round {self.round}: {stage!r} message out of order (at {self._stage!r})",
                node=node,
            )

    def _need(self, have: int, what: str) -> None:
        if have < self.graph.threshold:
            raise SecAggAbortedError(
                f"secagg round {self.round} abandoned: only {have} {what}, threshold "
                f"t={self.graph.threshold}; the global model is untouched"
            )

    # ------------------------------------------------------------------ 1. adverts
    def receive_advert(self, advert: K.KeyAdvert) -> None:
        self._expect("adverts", advert.node)
        if advert.node not in self.graph or advert.node in self.adverts:
            raise SecAggAbortedError(
                f"unexpected key advert from {advert.node!r}", node=advert.node
            )
        K.verify_advert(advert, self._directory.get(advert.node), self.round)
        self.adverts[advert.node] = advert

    def close_adverts(self) -> dict[str, list[K.KeyAdvert]]:
        """U1 = nodes with a verified advert; each gets its neighbours' adverts."""
        self._expect("adverts")
        self._need(len(self.adverts), "nodes advertised keys")
        self._stage = "shares"
        return {
            u: [self.adverts[v] for v in sorted(self.graph.neighbours(u)) if v in self.adverts]
            for u in self.adverts
        }

    # ------------------------------------------------------------------ 2. shares
    def receive_shares(self, node: str, sealed: list[SealedShares]) -> None:
        self._expect("shares", node)
        expected = {v for v in self.graph.neighbours(node) if v in self.adverts}
        receivers = [m.receiver for m in sealed]
        if (
            node not in self.adverts
            or node in self._sealed
            or any(m.sender != node or m.round != self.round for m in sealed)
            or len(set(receivers)) != len(receivers)
            or set(receivers) != expected
        ):
            raise SecAggAbortedError(f"malformed share message from node {node!r}", node=node)
        self._sealed[node] = list(sealed)

    def close_shares(self) -> dict[str, list[SealedShares]]:
        """U2 = nodes that dealt shares; each gets the sealed shares addressed to it."""
        self._expect("shares")
        self.shared = set(self._sealed)
        self._need(len(self.shared), "nodes shared keys")
        routed: dict[str, list[SealedShares]] = {u: [] for u in self.shared}
        for sender in sorted(self.shared):
            for msg in self._sealed[sender]:
                if msg.receiver in routed:
                    routed[msg.receiver].append(msg)
        self._sealed.clear()
        self._stage = "masked"
        return routed

    # ------------------------------------------------------------------ 3. masked input
    def masked_chunk(self, node: str, start: int, words: np.ndarray) -> None:
        """Fold ``words`` (uint32, masked elements ``[start, start + len)``) into the sum."""
        self._expect("masked", node)
        offset = self._offsets.get(node, 0)
        if node not in self.shared or node in self.survivors:
            raise SecAggAbortedError(f"unexpected masked input from node {node!r}", node=node)
        if words.dtype != np.uint32 or words.ndim != 1 or start != offset:
            raise SecAggAbortedError(f"out-of-order masked chunk from node {node!r}", node=node)
        if words.size == 0 or start + words.size > self.words:
            raise SecAggAbortedError(f"masked input of node {node!r} overflows", node=node)
        if self._sum is None:
            self._sum = np.zeros(self.words, dtype=np.uint32)
        target = self._sum[start : start + words.size]
        np.add(target, words, out=target)
        self._offsets[node] = start + words.size

    def masked_end(self, node: str) -> None:
        self._expect("masked", node)
        if node not in self.shared or self._offsets.get(node, 0) != self.words:
            raise SecAggAbortedError(f"incomplete masked input from node {node!r}", node=node)
        self.survivors.add(node)

    def close_masked(self) -> UnmaskRequest:
        """U3 = nodes whose whole masked input was folded; ask them to unmask."""
        self._expect("masked")
        partial = sorted(u for u in self._offsets if u not in self.survivors)
        if partial:
            raise SecAggAbortedError(
                f"secagg round {self.round} abandoned: masked input of {partial} was folded "
                f"only in part (stage a stream before feeding it)"
            )
        self._need(len(self.survivors), "nodes sent masked input")
        self._stage = "unmask"
        dropped = tuple(sorted(self.shared - self.survivors))
        return UnmaskRequest(self.round, tuple(sorted(self.survivors)), dropped)

    # ------------------------------------------------------------------ 4. unmask
    def receive_unmask(self, reply: UnmaskReply) -> None:
        """Check every revealed share (dealer signature, kind, holder index); then keep them."""
        node = reply.node
        self._expect("unmask", node)
        if node not in self.survivors or node in self.unmasked or reply.round != self.round:
            raise SecAggAbortedError(f"unexpected unmask reply from node {node!r}", node=node)
        me = self.graph.index(node)
        allowed = self.graph.holders(node) & self.shared
        seen: set[str] = set()
        checked: list[tuple[str, str, shamir.Share]] = []
        for item in reply.shares:
            right_kind = "seed" if item.owner in self.survivors else "key"
            share: shamir.Share | None = None
            if item.owner in allowed and item.owner not in seen and item.kind == right_kind:
                try:
                    share = shamir.Share.from_bytes(item.signed.share)
                except ValueError:
                    share = None
            if share is None or share.x != me:
                raise SecAggAuthError(f"share from node {node!r} failed verification", node=node)
            K.verify(
                self._directory.get(item.owner),
                item.signed.signature,
                share_signed_bytes(self.round, item.owner, node, item.kind, item.signed.share),
                node=node,
                what="revealed share",
            )
            seen.add(item.owner)
            checked.append((item.owner, item.kind, share))
        for owner, kind, share in checked:
            self._revealed.setdefault(owner, {}).setdefault(kind, []).append(share)
        self.unmasked.add(node)

    def _secret(self, owner: str, kind: str) -> bytes:
        shares = self._revealed.get(owner, {}).get(kind, [])
        if len(shares) < self.graph.threshold:
            raise SecAggAbortedError(
                f"secagg round {self.round} abandoned: {len(shares)} {kind} shares of node "
                f"{owner!r}, threshold t={self.graph.threshold}; the global model is untouched",
                node=owner,
            )
        return shamir.combine(shares, self.graph.threshold, owner=owner)

    def prepare_unmask(self) -> None:
        """Reconstruct and verify every secret needed to unmask; then :meth:`unmask_block`."""
        self._expect("unmask")
        self._need(len(self.unmasked), "nodes answered the unmask step")
        seeds = []
        for u in sorted(self.survivors):
            seed = self._secret(u, "seed")
            if not K.same(K.seed_commitment(self.round, u, seed), self.adverts[u].seed_commitment):
                raise SecAggAuthError(f"self-mask seed of node {u!r} failed verification", node=u)
            seeds.append(seed)
        pairwise: list[tuple[bytes, bool]] = []
        for u in sorted(self.shared - self.survivors):
            s_sk = self._secret(u, "key")
            if not K.same(K.s_pk_of(s_sk), self.adverts[u].s_pk):
                raise SecAggAuthError(f"mask key of node {u!r} failed verification", node=u)
            sk = X25519PrivateKey.from_private_bytes(s_sk)
            for v in sorted(self.graph.neighbours(u) & self.survivors):
                secret = K.agree(
                    sk,
                    self.adverts[v].s_pk,
                    purpose=MASK_PURPOSE,
                    round_=self.round,
                    a=u,
                    b=v,
                    peer=v,
                )
                # v added +mask when v < u, -mask otherwise: undo it.
                pairwise.append((secret, v < u))
        self._unmask_keys = [(seed, True) for seed in seeds] + pairwise
        self._stage = "unmasking"

    def unmask_block(self, start: int, words: np.ndarray) -> np.ndarray:
        """Remove the remaining masks from folded words ``[start, start + len)``, in place."""
        self._expect("unmasking")
        add_masks(words, self._unmask_keys, start)
        return words

    def masked_sum_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The folded (still masked) sum, in views of ``chunk_words``; released at the end."""
        self._expect("unmasking")
        total = self._sum if self._sum is not None else np.zeros(self.words, dtype=np.uint32)
        for start in range(0, self.words, self.chunk_words):
            yield start, total[start : start + self.chunk_words]
        self._sum = None
        self._stage = "done"

    def unmasked_blocks(self, workers: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """The unmasked sum, in order, in views of ``chunk_words`` (unmasked in place); with
        ``workers > 1`` that many threads unmask ahead of the consumer (AES-CTR and numpy
        release the GIL), so the consumer's own work on a block overlaps the next ones'.
        Released at the end."""
        self._expect("unmasking")
        total = self._sum if self._sum is not None else np.zeros(self.words, dtype=np.uint32)
        keys = self._unmask_keys
        starts = range(0, self.words, self.chunk_words)

        def unmask(start: int) -> np.ndarray:
            words = total[start : start + self.chunk_words]
            add_masks(words, keys, start)
            return words

        if workers <= 1:
            for start in starts:
                yield start, unmask(start)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="fedhive-unmask") as pool:
                yield from zip(starts, pool.map(unmask, starts), strict=True)
        self._sum = None
        self._stage = "done"

    def finish(self) -> np.ndarray:
        """Unmask the whole sum in place: the exact sum of the survivors' words (uint32)."""
        self.prepare_unmask()
        total = self._sum if self._sum is not None else np.zeros(self.words, dtype=np.uint32)
        for start, chunk in self.masked_sum_blocks():
            self.unmask_block(start, chunk)
        return total
