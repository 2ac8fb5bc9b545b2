"""The consortium's PKI: one CA, a coordinator certificate, one certificate per node, a CRL.

Built on ``cryptography``'s x509; keys are EC P-256 (what gRPC's BoringSSL handles everywhere).
A node's identity is the common name of its certificate (its node id). Layout of a PKI folder::

    ca/ca.key ca/ca.crt             the consortium CA (the key never leaves the operator)
    ca/index.json ca/crl.pem        every certificate issued; the revocation list
    server/server.{crt,key} ca.crt crl.pem     the coordinator's bundle (``--tls-dir``)
    nodes/<id>/node.{crt,key} ca.crt           one bundle per node, copied to its site
    nodes/<id>/identity.{crt,key}              its secure-aggregation signing identity

A node's secure-aggregation identity is an Ed25519 key certified by the same CA: subject CN =
node id, KeyUsage digitalSignature only, and the single extended key usage
:data:`SECAGG_IDENTITY_OID` (no TLS usage), so it cannot serve as a TLS certificate and a TLS
certificate cannot serve as it. Nodes check their peers' identity certificates against the CA
themselves: a coordinator that relays another key for a node cannot get it accepted.

Key files are written with mode 0600. Every failure is a :class:`PkiError` naming the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhive.common.errors import PkiError

NODE_UNIT = "fedhive-node"
SERVER_UNIT = "fedhive-coordinator"
IDENTITY_UNIT = "fedhive-secagg-identity"
ADMIN_UNIT = "fedhive-administrator"
# Extended key usage "fedhive control plane": an administrator's certificate carries it (with TLS
# client auth); the coordinator's control service accepts no other (fedhive certs admin).
ADMIN_OID = x509.ObjectIdentifier("2.25.111672152422245723479364547367428352975")
# Extended key usage "fedhive secure-aggregation signing": an OID under 2.25 (ITU-T X.667), the
# arc for identifiers derived from a UUID, so no registration is needed.
SECAGG_IDENTITY_OID = x509.ObjectIdentifier("2.25.261266641293457447239035298128338567380")
CA_DAYS = 3650
LEAF_DAYS = 825
CRL_DAYS = 30
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_node_id(node_id: str) -> str:
    if not NODE_ID.match(node_id):
        raise PkiError(
            f"node id {node_id!r} is not valid: 1-64 characters, letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return node_id


@dataclass(frozen=True)
class CertInfo:
    """What a certificate says, in plain values (for ``certs list`` and the logs)."""

    common_name: str
    unit: str
    serial: int
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertInfo:
        return cls(
            common_name=_attr(cert.subject, NameOID.COMMON_NAME),
            unit=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
            serial=cert.serial_number,
            issuer=_attr(cert.issuer, NameOID.COMMON_NAME),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


# ---------------------------------------------------------------------------- files


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    data = read_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{what} {path} is not a PEM certificate: {exc}") from exc


def load_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    data = read_bytes(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} {path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what} {path} is a {type(key).__name__}, not an EC key")
    return key


def write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        tmp.replace(path)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_key(path: Path, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(path, pem, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    write_file(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


# ---------------------------------------------------------------------------- x509


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _signing_usage(*, certificates: bool) -> x509.KeyUsage:
    """KeyUsage of a signing key: digital signatures, plus certificates and CRLs for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificates,
        crl_sign=certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey | Ed25519PublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    """A certificate the CA issues to an end entity (not a CA), before its usages."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def create_ca(
    name: str, *, days: int = CA_DAYS, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not name.strip():
        raise PkiError("the consortium name must not be empty")
    now = now or utcnow()
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_signing_usage(certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server: bool,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
    admin: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate: a node's (client auth), the coordinator's (server + client auth:
    its own health probe dials the mTLS port with it) or an administrator's (client auth + the
    control plane's usage, :data:`ADMIN_OID`; its unit is not a node's, so it cannot join)."""
    if admin and server:
        raise PkiError("a certificate is an administrator's or the coordinator's, not both")
    now = now or utcnow()
    key = new_key()
    org = _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)
    unit = SERVER_UNIT if server else ADMIN_UNIT if admin else NODE_UNIT
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    if admin:
        usages.append(ADMIN_OID)
    builder = _leaf(ca_key, ca_cert, subject, key.public_key(), now, days).add_extension(
        x509.ExtendedKeyUsage(usages), critical=False
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise PkiError(f"not an IP address: {ip!r}") from exc
    if not server:
        names.append(x509.DNSName(common_name))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    now = now or utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def read_crl(path: Path, ca_cert: x509.Certificate) -> frozenset[int]:
    """The revoked serial numbers of a CRL, after checking the CA signed it."""
    data = read_bytes(path, "revocation list")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PkiError(f"revocation list {path} is not a PEM CRL: {exc}") from exc
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise PkiError(f"revocation list {path} is not signed by the consortium CA")
    return frozenset(r.serial_number for r in crl)


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_bundle(
    cert_path: Path, key_path: Path, ca_path: Path, *, now: dt.datetime | None = None
) -> CertInfo:
    """Check one's own bundle before dialing: readable, key matches, issued by the CA, in date.

    Each problem is a :class:`PkiError` that says what to fix.
    """
    now = now or utcnow()
    cert = load_cert(cert_path)
    key = load_key(key_path)
    ca = load_cert(ca_path, "CA certificate")
    info = CertInfo.of(cert)
    if cert.public_key() != key.public_key():
        raise PkiError(f"private key {key_path} does not belong to certificate {cert_path}")
    if not signed_by(cert, ca):
        raise PkiError(
            f"certificate {cert_path} ({info.common_name}) was not issued by the CA in {ca_path} "
            f"({CertInfo.of(ca).common_name}): use the bundle the consortium issued to you"
        )
    if now > info.not_after:
        raise PkiError(
            f"certificate {cert_path} ({info.common_name}) expired on "
            f"{info.not_after:%Y-%m-%d %H:%M} UTC: ask the consortium operator for a new one "
            f"(fedhive certs node --id {info.common_name} --force)"
        )
    if now < info.not_before:
        raise PkiError(
            f"certificate {cert_path} is valid only from {info.not_before:%Y-%m-%d %H:%M} UTC: "
            "check this machine's clock"
        )
    return info


@dataclass(frozen=True)
class IndexEntry:
    serial: str
    kind: str
    name: str
    not_after: str
    path: str
    revoked_at: str | None = None

    @classmethod
    def load_all(cls, path: Path) -> list[IndexEntry]:
        if not path.exists():
            return []
        try:
            return [cls(**e) for e in json.loads(read_bytes(path, "certificate index"))]
        except (ValueError, TypeError) as exc:
            raise PkiError(f"certificate index {path} is damaged: {exc}") from exc

    @staticmethod
    def save_all(path: Path, entries: Sequence[IndexEntry]) -> None:
        text = json.dumps([asdict(e) for e in entries], indent=2) + "\n"
        write_file(path, text.encode(), 0o644)


# ---------------------------------------------------------------------------- SecAgg identity


def issue_identity(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    node_id: str,
    *,
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """A node's Ed25519 secure-aggregation signing key and its certificate."""
    now = now or utcnow()
    key = Ed25519PrivateKey.generate()
    subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)
            ),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, IDENTITY_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, check_node_id(node_id)),
        ]
    )
    cert = (
        _leaf(ca_key, ca_cert, subject, key.public_key(), now, days)
        .add_extension(_signing_usage(certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([SECAGG_IDENTITY_OID]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def verify_identity_cert(
    der: bytes,
    ca_cert: x509.Certificate,
    node_id: str,
    *,
    revoked: frozenset[int] = frozenset(),
    now: dt.datetime | None = None,
) -> Ed25519PublicKey:
    """The Ed25519 key certified for ``node_id`` by the consortium CA; raises :class:`PkiError`
    naming the first problem (not a certificate, another CA, out of date, revoked, not an
    identity certificate, not Ed25519, another node)."""
    now = now or utcnow()
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PkiError(f"identity certificate of {node_id!r} is not a DER certificate") from exc
    if not signed_by(cert, ca_cert):
        raise PkiError(f"identity certificate of {node_id!r} is not issued by the consortium CA")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError(
            f"identity certificate of {node_id!r} is not valid now (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    if cert.serial_number in revoked:
        raise PkiError(
            f"identity certificate of {node_id!r} (serial {cert.serial_number:x}) is revoked"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise PkiError(f"certificate of {node_id!r} is not a secure-aggregation identity") from exc
    if list(eku) != [SECAGG_IDENTITY_OID] or basic.ca:
        raise PkiError(f"certificate of {node_id!r} is not a secure-aggregation identity")
    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise PkiError(
            f"identity certificate of {node_id!r} holds a {type(public).__name__}, not Ed25519"
        )
    name = _attr(cert.subject, NameOID.COMMON_NAME)
    if name != node_id:
        raise PkiError(f"identity certificate names {name!r}, not {node_id!r}")
    return public
