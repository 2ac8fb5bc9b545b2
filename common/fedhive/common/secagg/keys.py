"""Keys of one SecAgg+ round: signed X25519 adverts, HKDF pairwise secrets, AEAD share channels.

Every node holds a long-term Ed25519 *identity* key whose public half its peers and the
coordinator know out of band (pinned at enrolment). Each round it makes two fresh X25519 pairs
(Bonawitz et al. 2017): ``c`` to encrypt shares to its neighbours, ``s`` to agree on pairwise
masks. The advert (both public keys and a commitment to the self-mask seed) is signed with the
identity key, so a coordinator cannot swap keys. Every verification failure raises the same
:class:`~fedhive.common.errors.SecAggAuthError` naming the node whose data failed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhive.common.errors import SecAggAuthError

DOMAIN = b"fedhive-secagg+/v1"
KEY_BYTES = 32
NONCE_BYTES = 12
SIG_BYTES = 64

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def field(data: bytes | str) -> bytes:
    """Length-prefixed encoding: concatenations of fields are unambiguous."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return struct.pack(">I", len(raw)) + raw


def context(purpose: str, round_: int, *parts: bytes | str) -> bytes:
    """Domain-separated context bytes for signatures, HKDF info and AEAD associated data."""
    return DOMAIN + field(purpose) + struct.pack(">Q", round_) + b"".join(field(p) for p in parts)


def public_bytes(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUB)


def seed_commitment(round_: int, node: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (published in the signed advert)."""
    return hashlib.sha256(context("seed-commitment", round_, node, seed)).digest()


@dataclass(frozen=True)
class KeyAdvert:
    """What a node publishes in the first step: its round keys, signed with its identity key."""

    node: str
    round: int
    c_pk: bytes
    s_pk: bytes
    seed_commitment: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        return context("advert", self.round, self.node, self.c_pk, self.s_pk, self.seed_commitment)


@dataclass(frozen=True)
class RoundKeys:
    """A node's secrets for one round: two X25519 pairs and the self-mask seed."""

    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    seed: bytes

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(KEY_BYTES))

    def s_sk_bytes(self) -> bytes:
        return self.s_sk.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def advert(self, identity: Ed25519PrivateKey, node: str, round_: int) -> KeyAdvert:
        unsigned = KeyAdvert(
            node,
            round_,
            public_bytes(self.c_sk.public_key()),
            public_bytes(self.s_sk.public_key()),
            seed_commitment(round_, node, self.seed),
            b"",
        )
        sig = identity.sign(unsigned.signed_bytes())
        return KeyAdvert(
            unsigned.node, round_, unsigned.c_pk, unsigned.s_pk, unsigned.seed_commitment, sig
        )


def verify_advert(advert: KeyAdvert, identity: Ed25519PublicKey | None, round_: int) -> None:
    """Raise :class:`SecAggAuthError` unless ``advert`` is signed by ``identity`` for ``round_``."""
    ok = identity is not None and advert.round == round_
    if ok and len(advert.c_pk) == KEY_BYTES and len(advert.s_pk) == KEY_BYTES:
        try:
            identity.verify(advert.signature, advert.signed_bytes())  # type: ignore[union-attr]
        except InvalidSignature:
            ok = False
    else:
        ok = False
    if not ok:
        raise SecAggAuthError(
            f"key advert from node {advert.node!r} failed verification", node=advert.node
        )


def verify(
    identity: Ed25519PublicKey | None, signature: bytes, message: bytes, *, node: str, what: str
) -> None:
    """Verify an Ed25519 signature; any failure is :class:`SecAggAuthError` naming ``node``."""
    try:
        if identity is None:
            raise InvalidSignature
        identity.verify(signature, message)
    except InvalidSignature:
        raise SecAggAuthError(f"{what} from node {node!r} failed verification", node=node) from None


def agree(
    sk: X25519PrivateKey, peer_pk: bytes, *, purpose: str, round_: int, a: str, b: str, peer: str
) -> bytes:
    """32-byte pairwise secret: X25519(sk, peer_pk) through HKDF-SHA256.

    The info binds ``purpose``, the round and both node ids (sorted, so both ends derive the same
    secret). A peer key that is malformed or of low order raises :class:`SecAggAuthError` naming
    ``peer``.
    """
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError:
        raise SecAggAuthError(f"public key of node {peer!r} is invalid", node=peer) from None
    lo, hi = sorted((a, b))
    return derive(shared, context(purpose, round_, lo, hi))


def derive(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(ikm)


def channel_ad(round_: int, sender: str, receiver: str) -> bytes:
    """AEAD associated data: the ciphertext only opens for this sender, receiver and round."""
    return context("share-channel", round_, sender, receiver)


def seal(key: bytes, plaintext: bytes, *, round_: int, sender: str, receiver: str) -> bytes:
    """ChaCha20-Poly1305 with a random nonce; returns ``nonce || ciphertext``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(
        nonce, plaintext, channel_ad(round_, sender, receiver)
    )


def open_sealed(key: bytes, sealed: bytes, *, round_: int, sender: str, receiver: str) -> bytes:
    """Inverse of :func:`seal`; any failure raises :class:`SecAggAuthError` naming ``sender``."""
    try:
        if len(sealed) < NONCE_BYTES + 16:
            raise InvalidTag
        return ChaCha20Poly1305(key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], channel_ad(round_, sender, receiver)
        )
    except InvalidTag:
        raise SecAggAuthError(
            f"encrypted shares from node {sender!r} to {receiver!r} failed verification",
            node=sender,
        ) from None


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality."""
    return hmac.compare_digest(a, b)


def s_pk_of(s_sk: bytes) -> bytes:
    """Public key of a raw X25519 private key (to check a reconstructed key against its advert)."""
    return public_bytes(X25519PrivateKey.from_private_bytes(s_sk).public_key())
