"""Known-answer vectors (tests/data/secagg/, made by scripts/gen_secagg_vectors.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.common.secagg import keys as K
from fedhive.common.secagg import prg, shamir

DATA = Path(__file__).resolve().parents[2] / "data" / "secagg"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


MASK = load("mask.json")
KDF = load("kdf.json")
SHAMIR = load("shamir.json")


def test_keystream_is_the_nist_sp800_38a_aes256_ctr_keystream() -> None:
    # Prepare: F.5.5 gives plaintext and ciphertext; their XOR is the keystream
    vec = MASK["sp800_38a_f55"]
    pt, ct = bytes.fromhex(vec["plaintext"]), bytes.fromhex(vec["ciphertext"])
    # Execute
    stream = prg.keystream(bytes.fromhex(vec["key"]), bytes.fromhex(vec["counter"]), len(pt))
    # Assert
    assert stream == bytes(a ^ b for a, b in zip(pt, ct, strict=True))
    assert stream.hex() == vec["keystream"]


def test_mask_words_are_the_little_endian_keystream_from_counter_zero() -> None:
    key = bytes.fromhex(MASK["sp800_38a_f55"]["key"])
    words = prg.mask_words(key, 0, 37)
    assert words.astype("<u4").tobytes() == prg.keystream(key, bytes(16), 4 * 37)


@pytest.mark.parametrize("case", MASK["cases"], ids=lambda c: f"[{c['start']},{c['stop']})")
def test_mask_stream_known_answers(case: dict[str, Any]) -> None:
    words = prg.mask_words(bytes.fromhex(case["key"]), case["start"], case["stop"])
    assert [int(w) for w in words] == case["words"]


def test_x25519_matches_rfc7748() -> None:
    vec = KDF["x25519"]
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["alice_sk"]))
    assert (
        alice.exchange(
            X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["bob_sk"])).public_key()
        ).hex()
        == vec["shared"]
    )


@pytest.mark.parametrize("case", KDF["hkdf"], ids=lambda c: f"{c['purpose']}-r{c['round']}")
def test_pairwise_secret_known_answers(case: dict[str, Any]) -> None:
    # Prepare
    vec = KDF["x25519"]
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["alice_sk"]))
    bob = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["bob_sk"]))
    args = {"purpose": case["purpose"], "round_": case["round"], "a": case["a"], "b": case["b"]}
    # Execute: both ends derive it, in either order of ids.
    ab = K.agree(alice, bytes.fromhex(vec["bob_pk"]), peer="b", **args)
    ba = K.agree(
        bob, bytes.fromhex(vec["alice_pk"]), peer="a", **{**args, "a": case["b"], "b": case["a"]}
    )
    # Assert
    assert ab.hex() == case["secret"] and ba == ab


def test_signed_advert_known_answer() -> None:
    vec = KDF["advert"]
    identity = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["identity_sk"]))
    keys = K.RoundKeys(
        X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["c_sk"])),
        X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["s_sk"])),
        bytes.fromhex(vec["seed"]),
    )
    advert = keys.advert(identity, vec["node"], vec["round"])
    assert advert.seed_commitment.hex() == vec["seed_commitment"]
    assert advert.signature.hex() == vec["signature"]
    K.verify_advert(advert, identity.public_key(), vec["round"])


@pytest.mark.parametrize("case", SHAMIR["cases"], ids=lambda c: f"t{c['t']}-of-{len(c['xs'])}")
def test_shamir_known_answers(case: dict[str, Any]) -> None:
    # Prepare
    secret = bytes.fromhex(case["secret"])
    coef = [int(c) for c in case["coefficients"]]
    # Execute
    shares = shamir.split(secret, case["xs"], case["t"], coefficients=coef)
    parsed = [shamir.Share.from_bytes(bytes.fromhex(h)) for h in case["shares"]]
    # Assert
    assert int(SHAMIR["prime"]) == shamir.PRIME
    assert [s.to_bytes().hex() for s in shares] == case["shares"]
    assert shamir.combine(parsed[-case["t"] :], case["t"]) == secret
