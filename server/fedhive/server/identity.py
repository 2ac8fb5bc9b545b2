"""Who is calling: mutual TLS credentials for the coordinator and the gate every call passes.

The TLS handshake (BoringSSL, ``require_client_auth``) already refuses a client without a
certificate, a certificate from another CA and an expired one. What it cannot know, the
:class:`PeerGate` checks on every call: the certificate is a *node* certificate, its serial is not
on the revocation list (re-read when the file changes), its id is on the allow-list if there is
one. The node's identity is the common name of its verified certificate, never a value it claims.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from fedhive.common.config import ServerConfig
from fedhive.common.crypto.pki import (
    ADMIN_OID,
    ADMIN_UNIT,
    NODE_UNIT,
    CertInfo,
    load_cert,
    load_key,
    read_bytes,
    read_crl,
    verify_identity_cert,
)
from fedhive.common.errors import AccessDeniedError, ConfigError, PkiError

log = logging.getLogger("fedhive.server.identity")


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    ca: Path
    crl: Path | None


def server_tls(config: ServerConfig) -> ServerTls | None:
    """The coordinator's TLS files from its config, checked; None in (explicit) insecure mode."""
    if config.insecure:
        return None
    missing = [name for name in ("tls_cert", "tls_key", "tls_ca") if getattr(config, name) is None]
    if missing:
        raise ConfigError(
            "mutual TLS is on by default and needs the coordinator's certificate bundle: "
            f"{', '.join(missing)} not set. Give --tls-dir (a folder made by `fedhive certs "
            "server`) or tls_cert, tls_key and tls_ca; or --insecure for plain text (testing only)"
        )
    assert config.tls_cert is not None and config.tls_key is not None
    assert config.tls_ca is not None
    tls = ServerTls(config.tls_cert, config.tls_key, config.tls_ca, config.crl)
    try:
        cert = load_cert(tls.cert, "coordinator certificate")
        key = load_key(tls.key, "coordinator key")
        load_cert(tls.ca, "CA certificate")
    except PkiError as exc:
        raise ConfigError(str(exc)) from exc
    if cert.public_key() != key.public_key():
        raise ConfigError(f"key {tls.key} does not belong to certificate {tls.cert}")
    return tls


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    try:
        pair = (read_bytes(tls.key, "coordinator key"), read_bytes(tls.cert, "certificate"))
        root = read_bytes(tls.ca, "CA certificate")
    except PkiError as exc:
        raise ConfigError(str(exc)) from exc
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=True)


class RevocationList:
    """The CRL's revoked serials, re-read when the file changes (a bad new file is logged and the
    last good list kept)."""

    def __init__(self, path: Path, ca: x509.Certificate) -> None:
        self.path = path
        self._ca = ca
        self._lock = threading.Lock()
        self._stamp = self._stat()
        try:
            self._serials = read_crl(path, ca)
        except PkiError as exc:
            raise ConfigError(str(exc)) from exc
        log.info("revocation list %s: %d revoked certificate(s)", path, len(self._serials))

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def serials(self) -> frozenset[int]:
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._serials = read_crl(self.path, self._ca)
                    log.info(
                        "revocation list %s re-read: %d revoked", self.path, len(self._serials)
                    )
                except PkiError as exc:
                    log.error("%s; keeping the previous revocation list", exc)
            return self._serials


class PeerGate:
    """Turns a call's TLS peer into a node id, or refuses it (PERMISSION_DENIED)."""

    def __init__(
        self,
        crl: RevocationList | None,
        allowed: frozenset[str] | None,
        ca: x509.Certificate | None = None,
    ) -> None:
        self.crl = crl
        self.allowed = allowed
        self.ca = ca
        self._certs: dict[bytes, CertInfo] = {}

    @classmethod
    def from_config(cls, config: ServerConfig, tls: ServerTls) -> PeerGate:
        ca = load_cert(tls.ca, "CA certificate")
        crl = RevocationList(tls.crl, ca) if tls.crl is not None else None
        allowed = frozenset(config.allowed_nodes) if config.allowed_nodes is not None else None
        return cls(crl, allowed, ca)

    def verify_identity(self, der: bytes, node_id: str) -> bytes:
        """A node's secure-aggregation identity certificate -> its raw Ed25519 key (the CA, the
        live revocation list, the node id); raises PkiError naming the problem."""
        if self.ca is None:
            raise PkiError("no CA certificate to check identity certificates against")
        revoked = self.crl.serials() if self.crl is not None else frozenset()
        key = verify_identity_cert(der, self.ca, node_id, revoked=revoked)
        return key.public_bytes_raw()

    def _info(self, pem: bytes) -> CertInfo:
        digest = hashlib.sha256(pem).digest()
        info = self._certs.get(digest)
        if info is None:
            info = CertInfo.of(x509.load_pem_x509_certificate(pem))
            if len(self._certs) > 4096:
                self._certs.clear()
            self._certs[digest] = info
        return info

    def identify(self, context: grpc.ServicerContext, method: str) -> str:
        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if not isinstance(pem, bytes) or not pem:
            # require_client_auth makes this unreachable; refuse rather than trust
            raise self._refuse(context, "(no certificate)", method, "no client certificate")
        info = self._info(pem)
        who = info.common_name
        if info.unit != NODE_UNIT:
            raise self._refuse(
                context, who, method, f"certificate of {who!r} is not a node certificate"
            )
        if self.crl is not None and info.serial in self.crl.serials():
            raise self._refuse(
                context,
                who,
                method,
                f"the certificate of node {who!r} (serial {info.serial:x}) is revoked: the "
                "consortium operator must issue a new one (fedhive certs node --force)",
            )
        if self.allowed is not None and who not in self.allowed:
            raise self._refuse(
                context, who, method, f"node {who!r} is not on the coordinator's allow-list"
            )
        return who

    @staticmethod
    def _refuse(
        context: grpc.ServicerContext, who: str, method: str, reason: str
    ) -> AccessDeniedError:
        log.warning("refused peer %s at %s (%s): %s", who, context.peer(), method, reason)
        return AccessDeniedError(reason)


def is_admin(cert: x509.Certificate) -> bool:
    """An administrator's certificate: the administrators' unit and the control plane's usage."""
    if CertInfo.of(cert).unit != ADMIN_UNIT:
        return False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ADMIN_OID in list(eku)


class AdminGate:
    """Turns a control-plane call's TLS peer into an administrator's name, or refuses it: only a
    certificate of the consortium CA (the handshake checked that) issued by `fedhive certs admin`
    (the administrators' unit and the control plane's extended key usage), not revoked."""

    def __init__(self, crl: RevocationList | None) -> None:
        self.crl = crl
        self._certs: dict[bytes, tuple[CertInfo, bool]] = {}

    @classmethod
    def from_tls(cls, tls: ServerTls) -> AdminGate:
        ca = load_cert(tls.ca, "CA certificate")
        return cls(RevocationList(tls.crl, ca) if tls.crl is not None else None)

    def _info(self, pem: bytes) -> tuple[CertInfo, bool]:
        digest = hashlib.sha256(pem).digest()
        known = self._certs.get(digest)
        if known is None:
            cert = x509.load_pem_x509_certificate(pem)
            known = (CertInfo.of(cert), is_admin(cert))
            if len(self._certs) > 4096:
                self._certs.clear()
            self._certs[digest] = known
        return known

    def identify(self, context: grpc.ServicerContext) -> str:
        """The caller's name; AccessDeniedError (PERMISSION_DENIED) naming why otherwise."""
        pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
        if not isinstance(pem, bytes) or not pem:
            raise AccessDeniedError("the control plane needs an administrator certificate")
        info, admin = self._info(pem)
        if not admin:
            raise AccessDeniedError(
                f"the certificate of {info.common_name!r} (unit {info.unit or 'none'}) is not an "
                "administrator certificate: the control plane takes only those of `fedhive certs "
                "admin`"
            )
        if self.crl is not None and info.serial in self.crl.serials():
            raise AccessDeniedError(
                f"the administrator certificate of {info.common_name!r} (serial "
                f"{info.serial:x}) is revoked"
            )
        return f"admin:{info.common_name}"
