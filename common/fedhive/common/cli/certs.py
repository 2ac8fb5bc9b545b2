"""``fedhive certs``: the consortium's certificate authority on the command line.

::

    fedhive certs init-ca --dir pki --name "North Hospitals"
    fedhive certs server  --dir pki --dns coordinator.example.org --ip 10.0.0.5
    fedhive certs node    --dir pki --id site-a          # bundle in pki/nodes/site-a/
    fedhive certs admin   --dir pki --id alice           # bundle in pki/admins/alice/
    fedhive certs list    --dir pki
    fedhive certs revoke  --dir pki --id site-a          # rewrites the CRL the coordinator reads
    fedhive certs bootstrap --dir pki --name X --nodes site-1,site-2 --admins ops \
        --status-token                                   # idempotent, for compose
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhive.common.cli.helptext import plain
from fedhive.common.crypto.pki import (
    CA_DAYS,
    LEAF_DAYS,
    CertInfo,
    IndexEntry,
    build_crl,
    check_node_id,
    create_ca,
    issue,
    issue_identity,
    load_cert,
    load_key,
    utcnow,
    write_cert,
    write_file,
    write_key,
)
from fedhive.common.errors import PkiError

DEFAULT_DNS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)


class Authority:
    """A PKI folder (see :mod:`fedhive.common.crypto.pki` for its layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.ca_key = self.root / "ca" / "ca.key"
        self.ca_cert = self.root / "ca" / "ca.crt"
        self.crl = self.root / "ca" / "crl.pem"
        self.index = self.root / "ca" / "index.json"
        self.server_dir = self.root / "server"

    def node_dir(self, node_id: str) -> Path:
        return self.root / "nodes" / check_node_id(node_id)

    def exists(self) -> bool:
        return self.ca_cert.exists()

    def init(self, name: str, *, days: int = CA_DAYS, force: bool = False) -> CertInfo:
        if self.exists() and not force:
            raise PkiError(
                f"a CA already exists in {self.root}: every certificate it issued would stop "
                "working; pass --force to replace it anyway"
            )
        key, cert = create_ca(name, days=days)
        write_key(self.ca_key, key)
        write_cert(self.ca_cert, cert)
        IndexEntry.save_all(self.index, [])
        self._write_crl([])
        return CertInfo.of(cert)

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.exists():
            raise PkiError(f"no CA in {self.root}: run `fedhive certs init-ca --dir {self.root}`")
        return load_key(self.ca_key, "CA key"), load_cert(self.ca_cert, "CA certificate")

    def issue_server(
        self,
        common_name: str = "coordinator",
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int = LEAF_DAYS,
        force: bool = False,
        now: dt.datetime | None = None,
    ) -> CertInfo:
        dns = list(dict.fromkeys([common_name, *dns]))
        folder = self.server_dir
        return self._issue(
            folder, "server", common_name, dns=dns, ips=ips, days=days, force=force, now=now
        )

    def issue_node(
        self,
        node_id: str,
        *,
        days: int = LEAF_DAYS,
        force: bool = False,
        now: dt.datetime | None = None,
    ) -> CertInfo:
        info = self._issue(
            self.node_dir(node_id), "node", node_id, dns=(), ips=(), days=days, force=force, now=now
        )
        self.issue_identity(node_id, days=days, now=now)
        return info

    def admin_dir(self, name: str) -> Path:
        return self.root / "admins" / check_node_id(name)

    def issue_admin(
        self,
        name: str,
        *,
        days: int = LEAF_DAYS,
        force: bool = False,
        now: dt.datetime | None = None,
    ) -> CertInfo:
        """An administrator's bundle (admin.crt, admin.key, ca.crt): it may call the coordinator
        service's control plane (`fedhive run ...`), and cannot join as a node."""
        return self._issue(
            self.admin_dir(name), "admin", name, dns=(), ips=(), days=days, force=force, now=now
        )

    def issue_identity(
        self, node_id: str, *, days: int = LEAF_DAYS, now: dt.datetime | None = None
    ) -> CertInfo:
        """The node's secure-aggregation signing key and certificate (identity.key, .crt), next
        to its TLS bundle; revoked together with it (same name in the index)."""
        folder = self.node_dir(node_id)
        ca_key, ca_cert = self._ca()
        key, cert = issue_identity(ca_key, ca_cert, node_id, days=days, now=now)
        write_key(folder / "identity.key", key)
        write_cert(folder / "identity.crt", cert)
        info = CertInfo.of(cert)
        entries = IndexEntry.load_all(self.index)
        entries.append(
            IndexEntry(
                serial=f"{info.serial:x}",
                kind="identity",
                name=node_id,
                not_after=info.not_after.isoformat(),
                path=str((folder / "identity.crt").relative_to(self.root)),
            )
        )
        IndexEntry.save_all(self.index, entries)
        return info

    def _issue(
        self,
        folder: Path,
        kind: str,
        common_name: str,
        *,
        dns: Sequence[str],
        ips: Sequence[str],
        days: int,
        force: bool,
        now: dt.datetime | None,
    ) -> CertInfo:
        if days < 1:
            raise PkiError(f"--days must be >= 1, got {days}")
        cert_path = folder / f"{kind}.crt"
        if cert_path.exists() and not force:
            raise PkiError(
                f"{cert_path} exists: pass --force to issue a new key and certificate "
                "(revoke the old one if it may be compromised)"
            )
        ca_key, ca_cert = self._ca()
        key, cert = issue(
            ca_key,
            ca_cert,
            common_name,
            server=kind == "server",
            admin=kind == "admin",
            dns=dns,
            ips=ips,
            days=days,
            now=now,
        )
        write_key(folder / f"{kind}.key", key)
        write_cert(cert_path, cert)
        shutil.copyfile(self.ca_cert, folder / "ca.crt")
        if kind == "server" and self.crl.exists():
            shutil.copyfile(self.crl, folder / "crl.pem")
        info = CertInfo.of(cert)
        entries = IndexEntry.load_all(self.index)
        entries.append(
            IndexEntry(
                serial=f"{info.serial:x}",
                kind=kind,
                name=common_name,
                not_after=info.not_after.isoformat(),
                path=str(cert_path.relative_to(self.root)),
            )
        )
        IndexEntry.save_all(self.index, entries)
        return info

    def entries(self) -> list[IndexEntry]:
        self._ca()
        return IndexEntry.load_all(self.index)

    def revoke(self, name: str) -> list[IndexEntry]:
        """Revoke every live certificate issued to ``name``; returns them."""
        entries = self.entries()
        now = utcnow()
        hit = [e for e in entries if e.name == name and e.revoked_at is None]
        if not hit:
            known = sorted({e.name for e in entries if e.revoked_at is None})
            raise PkiError(
                f"no live certificate for {name!r} in {self.root} (live: {', '.join(known) or '-'})"
            )
        updated = [replace(e, revoked_at=now.isoformat()) if e in hit else e for e in entries]
        IndexEntry.save_all(self.index, updated)
        self._write_crl(updated)
        return hit

    def _write_crl(self, entries: Sequence[IndexEntry]) -> None:
        ca_key, ca_cert = self._ca()
        revoked = [
            (int(e.serial, 16), dt.datetime.fromisoformat(e.revoked_at))
            for e in entries
            if e.revoked_at is not None
        ]
        crl = build_crl(ca_key, ca_cert, revoked)
        pem = crl.public_bytes(serialization.Encoding.PEM)
        write_file(self.crl, pem, 0o644)
        if self.server_dir.exists():
            write_file(self.server_dir / "crl.pem", pem, 0o644)

    @property
    def status_token(self) -> Path:
        """A bearer token for the coordinator's status page (``bootstrap --status-token``)."""
        return self.root / "status" / "status.token"

    def bootstrap(
        self,
        name: str,
        nodes: Sequence[str],
        *,
        dns: Sequence[str],
        ips: Sequence[str],
        admins: Sequence[str] = (),
        status_token: bool = False,
    ) -> list[str]:
        """Create what is missing (CA, coordinator, nodes, administrators, the status page's
        token); never replaces anything."""
        done = []
        if not self.exists():
            self.init(name)
            done.append("CA")
        if not (self.server_dir / "server.crt").exists():
            self.issue_server(dns=dns, ips=ips)
            done.append("coordinator")
        for node_id in nodes:
            if not (self.node_dir(node_id) / "node.crt").exists():
                self.issue_node(node_id)
                done.append(node_id)
            elif not (self.node_dir(node_id) / "identity.crt").exists():
                self.issue_identity(node_id)  # a bundle from before identity certificates
                done.append(f"{node_id} (identity)")
        for admin in admins:
            if not (self.admin_dir(admin) / "admin.crt").exists():
                self.issue_admin(admin)
                done.append(f"administrator {admin}")
        if status_token and not self.status_token.exists():
            self.status_token.parent.mkdir(parents=True, exist_ok=True)
            write_file(self.status_token, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
            done.append("status token")
        return done


def format_entries(entries: Sequence[IndexEntry]) -> str:
    """`certs list`: one row per certificate, columns as wide as their widest cell."""
    rows = [("NAME", "KIND", "SERIAL", "EXPIRES", "STATUS")]
    for e in entries:
        status = f"revoked {e.revoked_at[:10]}" if e.revoked_at else "valid"
        rows.append((e.name, e.kind, e.serial[:16], e.not_after[:10], status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4]])
        for row in rows
    )


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedhive certs",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--dir", type=Path, default=Path("pki"), help="PKI folder (default pki)")
        return c

    def days(c: argparse.ArgumentParser, default: int) -> None:
        c.add_argument(
            "--days", type=int, default=default, help=f"validity in days (default {default})"
        )

    def force(c: argparse.ArgumentParser, what: str) -> None:
        c.add_argument("--force", action="store_true", help=f"replace an existing {what}")

    def names(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--dns",
            action="append",
            default=[],
            help="DNS name the coordinator is dialled by (repeat or comma-separate; default "
            "localhost)",
        )
        c.add_argument(
            "--ip",
            action="append",
            default=[],
            help="IP address it is dialled by (repeat or comma-separate; default 127.0.0.1)",
        )

    c = cmd("init-ca", "create the consortium CA")
    c.add_argument("--name", required=True, help="consortium name (the CA's organization)")
    days(c, CA_DAYS)
    force(c, "CA")
    c = cmd("server", "issue the coordinator's certificate (bundle in DIR/server)")
    c.add_argument(
        "--cn", default="coordinator", help="common name, also a DNS name (default coordinator)"
    )
    names(c)
    days(c, LEAF_DAYS)
    force(c, "certificate and key")
    c = cmd("node", "issue a node's certificate (bundle in DIR/nodes/ID)")
    c.add_argument("--id", required=True, dest="node_id", help="node id (the certificate's CN)")
    days(c, LEAF_DAYS)
    force(c, "certificate and key")
    c = cmd("admin", "issue an administrator's certificate (bundle in DIR/admins/ID)")
    c.add_argument("--id", required=True, dest="node_id", help="administrator's name (its CN)")
    days(c, LEAF_DAYS)
    force(c, "certificate and key")
    cmd("list", "list issued certificates")
    c = cmd("revoke", "revoke a node's (or the coordinator's) certificates")
    c.add_argument("--id", required=True, dest="node_id", help="node id (or coordinator's CN)")
    c = cmd("bootstrap", "create whatever is missing: CA, coordinator and node certificates")
    c.add_argument("--name", required=True, help="consortium name, if a CA is created")
    c.add_argument(
        "--nodes",
        action="append",
        default=[],
        help="node ids (repeat or comma-separate; default none)",
    )
    c.add_argument(
        "--admins",
        action="append",
        default=[],
        help="administrators' names (repeat or comma-separate; default none)",
    )
    c.add_argument(
        "--status-token",
        action="store_true",
        help="also a bearer token for the status page in DIR/status/status.token",
    )
    names(c)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    ca = Authority(ns.dir)
    try:
        if ns.action == "init-ca":
            info = ca.init(ns.name, days=ns.days, force=ns.force)
            until = f"{info.not_after:%Y-%m-%d}"
            print(f"CA {info.common_name!r} in {ca.ca_cert} (valid until {until})")
        elif ns.action == "server":
            dns = _split(ns.dns) or list(DEFAULT_DNS)
            ips = _split(ns.ip) or list(DEFAULT_IPS)
            info = ca.issue_server(ns.cn, dns=dns, ips=ips, days=ns.days, force=ns.force)
            print(f"coordinator certificate {info.common_name!r} in {ca.server_dir}")
        elif ns.action == "node":
            info = ca.issue_node(ns.node_id, days=ns.days, force=ns.force)
            print(f"node bundle for {info.common_name!r} in {ca.node_dir(ns.node_id)}")
        elif ns.action == "admin":
            info = ca.issue_admin(ns.node_id, days=ns.days, force=ns.force)
            print(f"administrator bundle for {info.common_name!r} in {ca.admin_dir(ns.node_id)}")
        elif ns.action == "list":
            print(format_entries(ca.entries()))
        elif ns.action == "revoke":
            hit = ca.revoke(ns.node_id)
            print(f"revoked {len(hit)} certificate(s) of {ns.node_id!r}; CRL: {ca.crl}")
            if (ca.server_dir / "crl.pem").exists():
                print(
                    f"updated {ca.server_dir / 'crl.pem'}: a coordinator on another machine needs "
                    "this file in its --tls-dir (it re-reads it when it changes)"
                )
        else:
            done = ca.bootstrap(
                ns.name,
                _split(ns.nodes),
                dns=_split(ns.dns) or DEFAULT_DNS,
                ips=_split(ns.ip) or DEFAULT_IPS,
                admins=_split(ns.admins),
                status_token=ns.status_token,
            )
            print(f"issued: {', '.join(done)}" if done else f"nothing to do in {ca.root}")
    except PkiError as exc:
        print(f"fedhive certs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
