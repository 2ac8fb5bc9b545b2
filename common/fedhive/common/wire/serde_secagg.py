"""Protobuf <-> domain types for the SecAggStep call (the secure-aggregation part of serde).

Decoding checks every size the protocol fixes (32-byte keys, 64-byte signatures, share length,
known share kinds, bounded counts and node ids) and raises
:class:`~fedhive.common.errors.InvalidUpdateError` naming the problem; the cryptographic checks
themselves happen in the state machines.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.secagg.keys import KEY_BYTES, SIG_BYTES, KeyAdvert
from fedhive.common.secagg.messages import (
    Adverts,
    AwaitUnmask,
    Done,
    Pending,
    RevealedShare,
    SealedShares,
    SecAggReply,
    SecAggRequest,
    ShareKeys,
    ShareKind,
    SignedShare,
    UnmaskReply,
    UnmaskRequest,
)
from fedhive.common.secagg.shamir import SHARE_BYTES
from fedhive.common.wire.serde import auth_from_proto, auth_to_proto
from fedhive.proto.v1 import coordinator_pb2 as pb

MAX_ITEMS = 100_000
MAX_ID = 256
MAX_CERT = 8192  # one DER identity certificate (about 500 bytes)
MAX_SEALED = 1024
_KINDS: dict[ShareKind, pb.SecAggShareKind] = {
    "seed": pb.SECAGG_SHARE_KIND_SEED,
    "key": pb.SECAGG_SHARE_KIND_KEY,
}
_KIND_NAMES: dict[int, ShareKind] = {v: k for k, v in _KINDS.items()}


def _id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID:
        raise InvalidUpdateError(f"secagg {what}: node id must be 1-{MAX_ID} characters")
    return value


def _bytes(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise InvalidUpdateError(f"secagg {what}: {len(value)} bytes, expected {size}")
    return bytes(value)


def _count(items: Sequence[object], what: str) -> None:
    if len(items) > MAX_ITEMS:
        raise InvalidUpdateError(f"secagg {what}: {len(items)} items, at most {MAX_ITEMS}")


def advert_to_proto(
    advert: KeyAdvert, identity_key: bytes = b"", identity_cert: bytes = b""
) -> pb.SecAggKeyAdvert:
    return pb.SecAggKeyAdvert(
        node_id=advert.node,
        round=advert.round,
        c_pk=advert.c_pk,
        s_pk=advert.s_pk,
        seed_commitment=advert.seed_commitment,
        signature=advert.signature,
        identity_key=identity_key,
        identity_cert=identity_cert,
    )


def advert_from_proto(msg: pb.SecAggKeyAdvert) -> tuple[KeyAdvert, bytes, bytes]:
    what = "key advert"
    identity = bytes(msg.identity_key)
    if identity:
        _bytes(identity, KEY_BYTES, f"{what} identity key")
    cert = bytes(msg.identity_cert)
    if len(cert) > MAX_CERT:
        raise InvalidUpdateError(f"{what}: identity certificate of {len(cert)} bytes is too large")
    advert = KeyAdvert(
        _id(msg.node_id, what),
        msg.round,
        _bytes(msg.c_pk, KEY_BYTES, f"{what} c_pk"),
        _bytes(msg.s_pk, KEY_BYTES, f"{what} s_pk"),
        _bytes(msg.seed_commitment, 32, f"{what} seed commitment"),
        _bytes(msg.signature, SIG_BYTES, f"{what} signature"),
    )
    return advert, identity, cert


def sealed_to_proto(s: SealedShares) -> pb.SecAggSealedShares:
    return pb.SecAggSealedShares(
        sender=s.sender, receiver=s.receiver, round=s.round, sealed=s.sealed
    )


def sealed_from_proto(msg: pb.SecAggSealedShares) -> SealedShares:
    if len(msg.sealed) > MAX_SEALED:
        raise InvalidUpdateError(f"secagg sealed shares: {len(msg.sealed)} bytes is too large")
    return SealedShares(
        _id(msg.sender, "sealed shares"), _id(msg.receiver, "sealed shares"), msg.round, msg.sealed
    )


def _share_keys_to_proto(body: ShareKeys) -> pb.SecAggShareKeys:
    return pb.SecAggShareKeys(shares=[sealed_to_proto(s) for s in body.shares])


def _share_keys_from_proto(msg: pb.SecAggShareKeys) -> ShareKeys:
    _count(msg.shares, "share keys")
    return ShareKeys(tuple(sealed_from_proto(s) for s in msg.shares))


def _revealed_from_proto(msg: pb.SecAggRevealedShare) -> RevealedShare:
    kind = _KIND_NAMES.get(msg.kind)
    if kind is None:
        raise InvalidUpdateError(f"secagg revealed share: unknown kind {msg.kind}")
    signed = SignedShare(
        _bytes(msg.share, SHARE_BYTES, "revealed share"),
        _bytes(msg.signature, SIG_BYTES, "revealed share signature"),
    )
    return RevealedShare(_id(msg.owner, "revealed share"), kind, signed)


# ----------------------------------------------------------------------------- request


def request_to_proto(req: SecAggRequest) -> pb.SecAggRequest:
    msg = pb.SecAggRequest(auth=auth_to_proto(req.auth), round=req.round, wait_s=req.wait_s)
    body = req.body
    if isinstance(body, KeyAdvert):
        msg.advert.CopyFrom(advert_to_proto(body))
    elif isinstance(body, ShareKeys):
        msg.share_keys.CopyFrom(_share_keys_to_proto(body))
    elif isinstance(body, AwaitUnmask):
        msg.await_unmask.SetInParent()
    else:
        msg.unmask.CopyFrom(
            pb.SecAggUnmask(
                shares=[
                    pb.SecAggRevealedShare(
                        owner=s.owner,
                        kind=_KINDS[s.kind],
                        share=s.signed.share,
                        signature=s.signed.signature,
                    )
                    for s in body.shares
                ]
            )
        )
    return msg


def request_from_proto(msg: pb.SecAggRequest) -> SecAggRequest:
    auth = auth_from_proto(msg.auth)
    kind = msg.WhichOneof("body")
    body: KeyAdvert | ShareKeys | AwaitUnmask | UnmaskReply
    if kind == "advert":
        body = advert_from_proto(msg.advert)[0]
    elif kind == "share_keys":
        body = _share_keys_from_proto(msg.share_keys)
    elif kind == "await_unmask":
        body = AwaitUnmask()
    elif kind == "unmask":
        _count(msg.unmask.shares, "unmask")
        shares = tuple(_revealed_from_proto(s) for s in msg.unmask.shares)
        body = UnmaskReply(auth.node_id, msg.round, shares)
    else:
        raise InvalidUpdateError("secagg request without a body")
    return SecAggRequest(auth, msg.round, msg.wait_s, body)


# ----------------------------------------------------------------------------- reply


def reply_to_proto(rep: SecAggReply) -> pb.SecAggReply:
    msg = pb.SecAggReply(round=rep.round)
    body = rep.body
    if isinstance(body, Adverts):
        msg.adverts.CopyFrom(
            pb.SecAggAdverts(
                adverts=[
                    advert_to_proto(
                        a, body.identities.get(a.node, b""), body.certificates.get(a.node, b"")
                    )
                    for a in body.adverts
                ]
            )
        )
    elif isinstance(body, ShareKeys):
        msg.shares.CopyFrom(_share_keys_to_proto(body))
    elif isinstance(body, UnmaskRequest):
        msg.unmask_request.CopyFrom(
            pb.SecAggUnmaskRequest(survivors=list(body.survivors), dropped=list(body.dropped))
        )
    elif isinstance(body, Done):
        msg.done.SetInParent()
    else:
        msg.pending.CopyFrom(pb.SecAggPending(retry_after_s=body.retry_after_s))
    return msg


def reply_from_proto(msg: pb.SecAggReply) -> SecAggReply:
    kind = msg.WhichOneof("body")
    body: Adverts | ShareKeys | UnmaskRequest | Done | Pending
    if kind == "adverts":
        _count(msg.adverts.adverts, "adverts")
        items = [advert_from_proto(a) for a in msg.adverts.adverts]
        body = Adverts(
            tuple(a for a, _, _ in items),
            {a.node: key for a, key, _ in items if key},
            {a.node: cert for a, _, cert in items if cert},
        )
    elif kind == "shares":
        body = _share_keys_from_proto(msg.shares)
    elif kind == "unmask_request":
        req = msg.unmask_request
        _count(req.survivors, "survivors")
        _count(req.dropped, "dropped")
        body = UnmaskRequest(
            msg.round,
            tuple(_id(u, "survivors") for u in req.survivors),
            tuple(_id(u, "dropped") for u in req.dropped),
        )
    elif kind == "done":
        body = Done()
    elif kind == "pending":
        body = Pending(msg.pending.retry_after_s)
    else:
        raise InvalidUpdateError("secagg reply without a body")
    return SecAggReply(msg.round, body)
