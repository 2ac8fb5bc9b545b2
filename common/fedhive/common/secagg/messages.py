"""The messages of one SecAgg+ round (besides :class:`~fedhive.common.secagg.keys.KeyAdvert`).

Four steps, each a round trip through the coordinator:

1. advertise: every node sends a signed :class:`KeyAdvert`; the coordinator hands each node the
   adverts of its neighbours.
2. share keys: every node deals Shamir shares of its self-mask seed and of its mask key ``s_sk``
   to its neighbours, each share signed by the dealer, sealed per receiver (:class:`SealedShares`).
3. masked input: every node streams its quantized, masked words chunk by chunk (plain arrays).
4. unmask: the coordinator names the survivors (:class:`UnmaskRequest`); each survivor reveals,
   for each neighbour, the seed share (neighbour survived) or the key share (neighbour dropped),
   never both (:class:`UnmaskReply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedhive.common.secagg.keys import SIG_BYTES, KeyAdvert, context
from fedhive.common.secagg.shamir import SHARE_BYTES
from fedhive.common.wire.messages import NodeAuth

ShareKind = Literal["seed", "key"]
KINDS: tuple[ShareKind, ShareKind] = ("seed", "key")


def share_signed_bytes(round_: int, dealer: str, holder: str, kind: str, share: bytes) -> bytes:
    """What a dealer signs for each share: the holder and the kind are bound to it."""
    return context("share", round_, dealer, holder, kind, share)


@dataclass(frozen=True)
class SignedShare:
    share: bytes  # shamir.Share.to_bytes()
    signature: bytes  # the dealer's Ed25519 signature over share_signed_bytes(...)

    def to_bytes(self) -> bytes:
        return self.share + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedShare:
        if len(data) != SHARE_BYTES + SIG_BYTES:
            raise ValueError("bad signed share length")
        return cls(data[:SHARE_BYTES], data[SHARE_BYTES:])


@dataclass(frozen=True)
class SealedShares:
    """Shares of ``sender``'s seed and key for ``receiver``, sealed with their pairwise AEAD key."""

    sender: str
    receiver: str
    round: int
    sealed: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    round: int
    survivors: tuple[str, ...]  # sent their whole masked input
    dropped: tuple[str, ...]  # shared keys but did not finish their masked input


@dataclass(frozen=True)
class RevealedShare:
    owner: str  # whose secret
    kind: ShareKind
    signed: SignedShare


@dataclass(frozen=True)
class UnmaskReply:
    node: str
    round: int
    shares: tuple[RevealedShare, ...]


# ----------------------------------------------------------------------------- wire envelopes
# What one SecAggStep call carries (fedhive.common.wire.serde_secagg turns these into protobuf).


@dataclass(frozen=True)
class Adverts:
    adverts: tuple[KeyAdvert, ...]
    identities: dict[str, bytes] = field(default_factory=dict)  # node -> Ed25519 public key
    certificates: dict[str, bytes] = field(default_factory=dict)  # node -> identity cert (DER)


@dataclass(frozen=True)
class ShareKeys:
    shares: tuple[SealedShares, ...]


@dataclass(frozen=True)
class AwaitUnmask:
    pass


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Pending:
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class SecAggRequest:
    auth: NodeAuth
    round: int
    wait_s: float
    body: KeyAdvert | ShareKeys | AwaitUnmask | UnmaskReply


@dataclass(frozen=True)
class SecAggReply:
    round: int
    body: Adverts | ShareKeys | UnmaskRequest | Done | Pending
