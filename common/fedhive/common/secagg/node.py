"""The node side of SecAgg+: a sans-I/O state machine (no sockets, no threads, no clock).

Drive it with the coordinator's messages, in order::

    machine = NodeSecAgg(node, identity, directory, graph, round_, words)
    advert = machine.advertise()                         # -> coordinator
    sealed = machine.share_keys(neighbour_adverts)       # -> coordinator
    machine.receive_shares(sealed_for_me)                # from coordinator
    for start, words in chunks: machine.mask(start, words)   # in place; stream each chunk out
    reply = machine.unmask(request)                      # -> coordinator

Instead of masking chunk by chunk, a node may take its whole mask at once with ``machine.pad()``
as soon as the shares are in (before its update exists: while it trains) and add the quantized
words to it; the masked words are the same.

``directory`` maps node ids to their pinned Ed25519 identity keys. Every crypto failure raises
:class:`~fedhive.common.errors.SecAggAuthError` naming the node whose data failed; a step out of
order or too few peers raises :class:`~fedhive.common.errors.SecAggAbortedError`. Either way the
node stops this round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedhive.common.errors import SecAggAbortedError, SecAggAuthError
from fedhive.common.secagg import keys as K
from fedhive.common.secagg import shamir
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.messages import (
    RevealedShare,
    SealedShares,
    SignedShare,
    UnmaskReply,
    UnmaskRequest,
    share_signed_bytes,
)
from fedhive.common.secagg.prg import MAX_WORDS, add_masks

MASK_PURPOSE = "pairwise-mask"
CHANNEL_PURPOSE = "share-channel"


class NodeSecAgg:
    def __init__(
        self,
        node: str,
        identity: Ed25519PrivateKey,
        directory: Mapping[str, Ed25519PublicKey],
        graph: Graph,
        round_: int,
        words: int,
        *,
        keys: K.RoundKeys | None = None,
    ) -> None:
        if node not in graph:
            raise SecAggAbortedError(f"node {node!r} is not part of round {round_}", node=node)
        if not 1 <= words <= MAX_WORDS:
            raise SecAggAbortedError(f"cannot mask {words} words", node=node)
        self.node = node
        self.graph = graph
        self.round = round_
        self.words = words
        self._identity = identity
        self._directory = directory
        self._keys = keys or K.RoundKeys.generate()
        self._stage = "advertise"
        self._adverts: dict[str, K.KeyAdvert] = {}
        self._held: dict[str, dict[str, SignedShare]] = {}  # owner -> kind -> share I hold
        self._pairwise: list[tuple[bytes, bool]] = []  # (key, subtract)

    def _step(self, expected: str, following: str) -> None:
        if self._stage != expected:
            raise SecAggAbortedError(
                f"node {self.node!r}: secagg step {expected!r} out of order (at {self._stage!r})",
                node=self.node,
            )
        self._stage = following

    # ------------------------------------------------------------------ 1. advertise
    def advertise(self) -> K.KeyAdvert:
        self._step("advertise", "share")
        return self._keys.advert(self._identity, self.node, self.round)

    # ------------------------------------------------------------------ 2. share keys
    def share_keys(self, adverts: Sequence[K.KeyAdvert]) -> list[SealedShares]:
        """Verify the neighbours' adverts; deal signed, sealed shares to each of them."""
        self._step("share", "receive")
        neighbours = self.graph.neighbours(self.node)
        for advert in adverts:
            if advert.node == self.node:
                continue
            if advert.node not in neighbours or advert.node in self._adverts:
                raise SecAggAbortedError(
                    f"unexpected key advert from {advert.node!r} for node {self.node!r}",
                    node=advert.node,
                )
            K.verify_advert(advert, self._directory.get(advert.node), self.round)
            self._adverts[advert.node] = advert
        holders = [*sorted(self._adverts), self.node]
        self._need(len(holders), "neighbours with verified keys")
        xs = [self.graph.index(h) for h in holders]
        t = self.graph.threshold
        dealt = {
            "seed": shamir.split(self._keys.seed, xs, t),
            "key": shamir.split(self._keys.s_sk_bytes(), xs, t),
        }
        out: list[SealedShares] = []
        for i, holder in enumerate(holders):
            signed = {kind: self._sign(holder, kind, dealt[kind][i].to_bytes()) for kind in dealt}
            if holder == self.node:
                self._held[self.node] = signed
                continue
            plaintext = signed["seed"].to_bytes() + signed["key"].to_bytes()
            key = self._channel_key(holder)
            sealed = K.seal(key, plaintext, round_=self.round, sender=self.node, receiver=holder)
            out.append(SealedShares(self.node, holder, self.round, sealed))
        return out

    def _sign(self, holder: str, kind: str, share: bytes) -> SignedShare:
        msg = share_signed_bytes(self.round, self.node, holder, kind, share)
        return SignedShare(share, self._identity.sign(msg))

    def _channel_key(self, peer: str) -> bytes:
        return K.agree(
            self._keys.c_sk,
            self._adverts[peer].c_pk,
            purpose=CHANNEL_PURPOSE,
            round_=self.round,
            a=self.node,
            b=peer,
            peer=peer,
        )

    def _need(self, have: int, what: str) -> None:
        if have < self.graph.threshold:
            raise SecAggAbortedError(
                f"node {self.node!r}: only {have} {what} (self included), threshold "
                f"t={self.graph.threshold}: round {self.round} abandoned",
                node=self.node,
            )

    # ------------------------------------------------------------------ 3. masked input
    def receive_shares(self, sealed: Sequence[SealedShares]) -> None:
        """Open and verify the shares the neighbours dealt to this node; derive pairwise masks."""
        self._step("receive", "mask")
        me = self.graph.index(self.node)
        for msg in sealed:
            sender = msg.sender
            if msg.receiver != self.node or sender not in self._adverts or sender in self._held:
                raise SecAggAbortedError(
                    f"unexpected shares from {sender!r} for node {self.node!r}", node=sender
                )
            plain = K.open_sealed(
                self._channel_key(sender),
                msg.sealed,
                round_=self.round,
                sender=sender,
                receiver=self.node,
            )
            half = len(plain) // 2
            try:
                pair = {
                    "seed": SignedShare.from_bytes(plain[:half]),
                    "key": SignedShare.from_bytes(plain[half:]),
                }
                xs = {shamir.Share.from_bytes(s.share).x for s in pair.values()}
            except ValueError:
                xs = set()
                pair = {}
            if xs != {me}:
                raise SecAggAuthError(
                    f"shares from node {sender!r} failed verification", node=sender
                )
            for kind, signed in pair.items():
                K.verify(
                    self._directory.get(sender),
                    signed.signature,
                    share_signed_bytes(self.round, sender, self.node, kind, signed.share),
                    node=sender,
                    what="share",
                )
            self._held[sender] = pair
        self._need(len(self._held), "neighbours that shared keys")
        for peer in sorted(self._held):
            if peer == self.node:
                continue
            secret = K.agree(
                self._keys.s_sk,
                self._adverts[peer].s_pk,
                purpose=MASK_PURPOSE,
                round_=self.round,
                a=self.node,
                b=peer,
                peer=peer,
            )
            self._pairwise.append((secret, self.node > peer))

    def mask(self, start: int, words: np.ndarray) -> np.ndarray:
        """Mask quantized words ``[start, start + len)`` in place (uint32, mod 2^32)."""
        if self._stage != "mask":
            raise SecAggAbortedError(f"node {self.node!r}: masking out of order", node=self.node)
        if (
            words.dtype != np.uint32
            or words.ndim != 1
            or start < 0
            or start + words.size > self.words
        ):
            raise ValueError(
                f"chunk [{start}, {start + words.size}) outside the {self.words} words"
            )
        add_masks(words, self._masks(), start)
        return words

    def pad(self) -> np.ndarray:
        """This node's whole mask, words ``[0, words)``, as a new uint32 array: the self mask
        plus the pairwise masks of every neighbour that shared keys. Adding the quantized words
        to it, mod 2^32, gives exactly what :meth:`mask` gives block by block. The masks depend
        only on the keys and on who shared, not on the update: a node can compute them while it
        still trains."""
        if self._stage != "mask":
            raise SecAggAbortedError(f"node {self.node!r}: masking out of order", node=self.node)
        out = np.zeros(self.words, dtype=np.uint32)
        add_masks(out, self._masks(), 0)
        return out

    def _masks(self) -> list[tuple[bytes, bool]]:
        return [(self._keys.seed, False), *self._pairwise]

    # ------------------------------------------------------------------ 4. unmask
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Per neighbour that shared keys: its seed share if it survived, else its key share."""
        self._step("mask", "done")
        survivors = set(request.survivors)
        if request.round != self.round or self.node not in survivors:
            raise SecAggAbortedError(
                f"node {self.node!r}: unmask request for another round or survivor set",
                node=self.node,
            )
        if set(request.dropped) & survivors:
            raise SecAggAbortedError(
                f"node {self.node!r}: a node is both a survivor and dropped", node=self.node
            )
        self._need(len(survivors & self._held.keys()), "surviving neighbours")
        shares = tuple(
            RevealedShare(owner, kind, self._held[owner][kind])
            for owner in sorted(self._held)
            for kind in ("seed" if owner in survivors else "key",)
        )
        return UnmaskReply(self.node, self.round, shares)
