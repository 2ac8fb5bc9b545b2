"""Generate the SecAgg+ known-answer vectors under tests/data/secagg/ (run once; commit the files).

    python scripts/gen_secagg_vectors.py

Anchors from the standards are checked before anything is written: NIST SP 800-38A F.5.5
(CTR-AES256.Encrypt: the keystream is ciphertext XOR plaintext) and RFC 7748 6.1 (X25519). The
rest is what this implementation produces from fixed inputs, frozen so that any change to key
derivation, mask expansion or share encoding shows up as a failing test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhive.common.secagg import keys as K
from fedhive.common.secagg import prg, shamir

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "secagg"

SP800_38A_F55 = {
    "key": "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
    "counter": "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "plaintext": "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    "ciphertext": "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
}
RFC7748 = {
    "alice_sk": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_pk": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_sk": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_pk": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}


def key(label: str) -> bytes:
    return hashlib.sha256(f"fedhive-secagg-kat/{label}".encode()).digest()


def mask_vectors() -> dict:
    vec = SP800_38A_F55
    stream = bytes(
        a ^ b
        for a, b in zip(
            bytes.fromhex(vec["plaintext"]), bytes.fromhex(vec["ciphertext"]), strict=True
        )
    )
    key_, counter = bytes.fromhex(vec["key"]), bytes.fromhex(vec["counter"])
    if prg.keystream(key_, counter, len(stream)) != stream:
        raise SystemExit("AES-256-CTR keystream does not match NIST SP 800-38A F.5.5")
    # mask words are the little-endian words of the keystream from counter block 0
    if prg.mask_words(key_, 0, 16).tobytes() != prg.keystream(key_, bytes(16), 64):
        raise SystemExit("mask words are not the keystream from counter 0")
    # unaligned starts, and a range whose counter carries past 32 bits
    ranges = [(0, 20), (13, 45), (1000, 1003), (4 * (1 << 32) - 2, 4 * (1 << 32) + 3)]
    cases = [
        {
            "key": key(f"mask/{i}").hex(),
            "start": a,
            "stop": b,
            "words": [int(w) for w in prg.mask_words(key(f"mask/{i}"), a, b)],
        }
        for i, (a, b) in enumerate(ranges)
    ]
    return {"sp800_38a_f55": {**vec, "keystream": stream.hex()}, "cases": cases}


def kdf_vectors() -> dict:
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748["alice_sk"]))
    bob = X25519PrivateKey.from_private_bytes(bytes.fromhex(RFC7748["bob_sk"]))
    if (
        K.public_bytes(alice.public_key()).hex() != RFC7748["alice_pk"]
        or alice.exchange(bob.public_key()).hex() != RFC7748["shared"]
    ):
        raise SystemExit("X25519 does not match RFC 7748 6.1")
    bob_pk = bytes.fromhex(RFC7748["bob_pk"])
    cases = []
    for purpose, round_, a, b in [
        ("pairwise-mask", 1, "site-a", "site-b"),
        ("pairwise-mask", 2, "site-a", "site-b"),
        ("share-channel", 1, "site-b", "site-a"),
    ]:
        secret = K.agree(alice, bob_pk, purpose=purpose, round_=round_, a=a, b=b, peer=b)
        cases.append({"purpose": purpose, "round": round_, "a": a, "b": b, "secret": secret.hex()})
    identity = Ed25519PrivateKey.from_private_bytes(key("identity"))
    round_keys = K.RoundKeys(alice, bob, key("seed"))
    advert = round_keys.advert(identity, "site-a", 3)
    return {
        "x25519": RFC7748,
        "hkdf": cases,
        "advert": {
            "identity_sk": key("identity").hex(),
            "node": "site-a",
            "round": 3,
            "c_sk": RFC7748["alice_sk"],
            "s_sk": RFC7748["bob_sk"],
            "seed": key("seed").hex(),
            "seed_commitment": advert.seed_commitment.hex(),
            "signature": advert.signature.hex(),
        },
    }


def shamir_vectors() -> dict:
    cases = []
    for i, (xs, t) in enumerate([([1, 2, 3], 2), ([2, 5, 7, 9, 11], 3), ([4], 1)]):
        secret = key(f"shamir/{i}")
        coef = [
            int.from_bytes(key(f"shamir/{i}/coef/{j}"), "big") % shamir.PRIME
            for j in range((t - 1) * shamir.ELEMENTS)
        ]
        shares = shamir.split(secret, xs, t, coefficients=coef)
        cases.append(
            {
                "secret": secret.hex(),
                "xs": xs,
                "t": t,
                "coefficients": [str(c) for c in coef],
                "shares": [s.to_bytes().hex() for s in shares],
            }
        )
    return {"prime": str(shamir.PRIME), "cases": cases}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in [
        ("mask.json", mask_vectors()),
        ("kdf.json", kdf_vectors()),
        ("shamir.json", shamir_vectors()),
    ]:
        (OUT / name).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
