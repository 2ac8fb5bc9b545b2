"""A node's secure-aggregation identity: its long-term Ed25519 key and, under mutual TLS, the
CA's certificate for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhive.common.crypto.pki import load_cert, read_bytes, verify_identity_cert
from fedhive.common.errors import ConfigError, PkiError
from fedhive.common.secagg.keys import KEY_BYTES


@dataclass(frozen=True)
class NodeIdentity:
    """This node's secure-aggregation identity; under mutual TLS with the CA's certificate for
    it (``cert``, DER) and the CA that peers' certificates must come from (``ca``)."""

    key: Ed25519PrivateKey
    cert: bytes = b""
    ca: x509.Certificate | None = None

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes_raw()


def load_node_identity(
    key_path: Path | None, cert_path: Path | None, ca_path: Path | None, node_id: str
) -> NodeIdentity:
    """The identity a node runs with: with ``cert_path`` (mutual TLS), the certificate must be
    the CA's, for ``node_id`` (the TLS certificate's name), and certify this very key."""
    key = load_identity(key_path)
    if cert_path is None:
        return NodeIdentity(key)
    if ca_path is None:
        raise ConfigError("an identity certificate needs the CA certificate (tls_ca) to check it")
    try:
        pem = read_bytes(cert_path, "identity certificate")
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        ca = load_cert(ca_path, "CA certificate")
        certified = verify_identity_cert(der, ca, node_id)
    except ValueError as exc:
        raise ConfigError(f"identity certificate {cert_path} is not a PEM certificate") from exc
    except PkiError as exc:
        raise ConfigError(f"identity certificate {cert_path}: {exc}") from exc
    if certified.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise ConfigError(f"identity certificate {cert_path} certifies another key than {key_path}")
    return NodeIdentity(key, der, ca)


def load_identity(path: Path | None) -> Ed25519PrivateKey:
    """The node's long-term Ed25519 identity: from ``path`` (PEM, or 32 raw private bytes), or
    a fresh key for this process when no path is configured."""
    if path is None:
        return Ed25519PrivateKey.generate()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the identity key file {path}: {exc}") from exc
    try:
        if len(data) == KEY_BYTES:
            return Ed25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity key file {path} is not an Ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key file {path} holds a {type(key).__name__}, not Ed25519")
    return key
