"""Secure-aggregation identity certificates: issued with each node, checked by everyone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedhive.client.secagg import NodeIdentity, TransportChannel, load_node_identity
from fedhive.common.cli.certs import Authority
from fedhive.common.crypto.pki import (
    SECAGG_IDENTITY_OID,
    load_cert,
    load_key,
    utcnow,
    verify_identity_cert,
)
from fedhive.common.errors import ConfigError, PkiError, SecAggAuthError
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import Adverts, SecAggReply, SecAggRequest
from fedhive.common.wire.messages import NodeAuth


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority(tmp_path / "pki")
    ca.bootstrap("Test Consortium", ["site-a", "site-b"], dns=["localhost"], ips=["127.0.0.1"])
    return ca


def der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


def test_a_node_bundle_carries_an_identity_the_ca_certifies(pki: Authority) -> None:
    # Prepare
    folder = pki.node_dir("site-a")
    # Execute
    key = verify_identity_cert(der(folder / "identity.crt"), load_cert(pki.ca_cert), "site-a")
    identity = load_node_identity(
        folder / "identity.key", folder / "identity.crt", folder / "ca.crt", "site-a"
    )
    # Assert
    assert key.public_bytes_raw() == identity.public
    assert identity.cert == der(folder / "identity.crt") and identity.ca is not None


def test_identity_of_another_ca_is_refused(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    other = Authority(tmp_path / "other")
    other.bootstrap("Other", ["site-a"], dns=[], ips=[])
    # Execute / Assert
    with pytest.raises(PkiError, match="not issued by the consortium CA"):
        verify_identity_cert(
            der(other.node_dir("site-a") / "identity.crt"), load_cert(pki.ca_cert), "site-a"
        )


def test_identity_of_another_node_is_refused(pki: Authority) -> None:
    cert = der(pki.node_dir("site-b") / "identity.crt")
    with pytest.raises(PkiError, match="names 'site-b', not 'site-a'"):
        verify_identity_cert(cert, load_cert(pki.ca_cert), "site-a")


def test_expired_identity_is_refused(pki: Authority) -> None:
    # Prepare: checked three years after it was issued
    cert = der(pki.node_dir("site-a") / "identity.crt")
    later = utcnow() + dt.timedelta(days=3 * 365)
    # Execute / Assert
    with pytest.raises(PkiError, match="not valid now"):
        verify_identity_cert(cert, load_cert(pki.ca_cert), "site-a", now=later)


def test_revoked_identity_is_refused(pki: Authority) -> None:
    # Prepare
    cert = der(pki.node_dir("site-a") / "identity.crt")
    pki.revoke("site-a")
    revoked = frozenset(int(e.serial, 16) for e in pki.entries() if e.revoked_at)
    # Execute / Assert
    with pytest.raises(PkiError, match="is revoked"):
        verify_identity_cert(cert, load_cert(pki.ca_cert), "site-a", revoked=revoked)


def test_a_tls_certificate_is_not_an_identity(pki: Authority) -> None:
    cert = der(pki.node_dir("site-a") / "node.crt")
    with pytest.raises(PkiError, match="not a secure-aggregation identity"):
        verify_identity_cert(cert, load_cert(pki.ca_cert), "site-a")


def test_an_identity_usage_on_a_non_ed25519_key_is_refused(pki: Authority) -> None:
    # Prepare: the CA itself signs the right usage over an EC key
    ca_key, ca_cert = load_key(pki.ca_key), load_cert(pki.ca_cert)
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-a")]))
        .issuer_name(ca_cert.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([SECAGG_IDENTITY_OID]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # Execute / Assert
    with pytest.raises(PkiError, match="holds a ECPublicKey"):
        verify_identity_cert(cert.public_bytes(serialization.Encoding.DER), ca_cert, "site-a")


def test_garbage_is_not_a_certificate(pki: Authority) -> None:
    with pytest.raises(PkiError, match="not a DER certificate"):
        verify_identity_cert(b"\x30\x03junk", load_cert(pki.ca_cert), "site-a")


def test_a_node_refuses_to_start_with_a_key_its_certificate_does_not_name(
    pki: Authority,
) -> None:
    a, b = pki.node_dir("site-a"), pki.node_dir("site-b")
    with pytest.raises(ConfigError, match="certifies another key"):
        load_node_identity(b / "identity.key", a / "identity.crt", a / "ca.crt", "site-a")


def test_a_node_refuses_to_start_with_another_nodes_identity(pki: Authority) -> None:
    b = pki.node_dir("site-b")
    with pytest.raises(ConfigError, match="names 'site-b', not 'site-a'"):
        load_node_identity(b / "identity.key", b / "identity.crt", b / "ca.crt", "site-a")


class RelayingCoordinator:
    """A transport whose coordinator answers a key advert with the given relay."""

    def __init__(self, reply: Adverts) -> None:
        self.reply = reply

    def secagg_step(self, request: SecAggRequest) -> SecAggReply:
        return SecAggReply(request.round, self.reply)


def advert(node: str) -> KeyAdvert:
    return KeyAdvert(node, 7, bytes(32), bytes(32), bytes(32), bytes(64))


def advertise_through(reply: Adverts, identity: NodeIdentity) -> TransportChannel:
    channel = TransportChannel(
        RelayingCoordinator(reply),  # type: ignore[arg-type]
        NodeAuth("site-a", b"t"),
        7,
        identity,
        lambda blocks: 0,
        10,
        wait_s=1.0,
    )
    channel.advertise(advert("site-a"))
    return channel


def identity_of(pki: Authority, node: str) -> NodeIdentity:
    folder = pki.node_dir(node)
    return load_node_identity(
        folder / "identity.key", folder / "identity.crt", folder / "ca.crt", node
    )


def test_peers_keys_are_taken_from_their_ca_certificates(pki: Authority) -> None:
    # Prepare: an honest relay
    a, b = identity_of(pki, "site-a"), identity_of(pki, "site-b")
    relay = Adverts(
        (advert("site-a"), advert("site-b")),
        {"site-a": a.public, "site-b": b.public},
        {"site-a": a.cert, "site-b": b.cert},
    )
    # Execute
    channel = advertise_through(relay, a)
    # Assert
    assert channel.directory["site-b"].public_bytes_raw() == b.public


@pytest.mark.parametrize("forgery", ["own-ca", "another-nodes-cert", "no-cert"])
def test_a_coordinator_cannot_substitute_a_peers_identity(
    tmp_path: Path, pki: Authority, forgery: str
) -> None:
    # Prepare: the coordinator swaps site-b's identity for one it controls
    a = identity_of(pki, "site-a")
    rogue = Authority(tmp_path / "rogue")
    rogue.bootstrap("Test Consortium", ["site-b"], dns=[], ips=[])
    forged = {
        "own-ca": der(rogue.node_dir("site-b") / "identity.crt"),
        "another-nodes-cert": a.cert,
        "no-cert": b"",
    }[forgery]
    certs = {"site-a": a.cert} | ({"site-b": forged} if forged else {})
    relay = Adverts((advert("site-a"), advert("site-b")), {"site-b": bytes(32)}, certs)
    # Execute / Assert: one uniform error, naming the node
    with pytest.raises(SecAggAuthError, match="site-b") as info:
        advertise_through(relay, a)
    assert info.value.node == "site-b"


def test_a_coordinator_cannot_replace_the_nodes_own_identity(pki: Authority) -> None:
    a, b = identity_of(pki, "site-a"), identity_of(pki, "site-b")
    relay = Adverts((advert("site-a"),), {}, {"site-a": b.cert})
    with pytest.raises(SecAggAuthError, match="another identity for this node"):
        advertise_through(relay, a)
