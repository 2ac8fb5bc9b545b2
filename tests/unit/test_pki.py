"""The consortium PKI: `fedhive certs`, bundle checks, the CRL, TLS settings."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from fedhive.client.health import main as health_main
from fedhive.common.cli.certs import Authority, main
from fedhive.common.config import ClientConfig, ServerConfig, build_config
from fedhive.common.crypto.pki import (
    NODE_UNIT,
    SERVER_UNIT,
    CertInfo,
    check_bundle,
    load_cert,
    read_crl,
    utcnow,
)
from fedhive.common.errors import ConfigError, PkiError
from fedhive.server.identity import server_tls


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority(tmp_path / "pki")
    ca.bootstrap("Test Consortium", ["site-a", "site-b"], dns=["coordinator"], ips=["127.0.0.1"])
    return ca


def test_cli_issues_a_ca_a_coordinator_and_node_bundles_with_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    root = tmp_path / "pki"

    # Execute
    codes = [
        main(["init-ca", "--dir", str(root), "--name", "North Hospitals"]),
        main(["server", "--dir", str(root), "--dns", "coord.example.org", "--ip", "10.0.0.5"]),
        main(["node", "--dir", str(root), "--id", "site-a"]),
        main(["list", "--dir", str(root)]),
    ]

    # Assert
    assert codes == [0, 0, 0, 0]
    node = root / "nodes" / "site-a"
    assert sorted(p.name for p in node.iterdir()) == [
        "ca.crt",
        "identity.crt",
        "identity.key",
        "node.crt",
        "node.key",
    ]
    keys = [root / "ca" / "ca.key", root / "server" / "server.key", node / "node.key"]
    for key in [*keys, node / "identity.key"]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    info = check_bundle(node / "node.crt", node / "node.key", node / "ca.crt")
    assert (info.common_name, info.unit, info.issuer) == ("site-a", NODE_UNIT, "North Hospitals CA")
    server = CertInfo.of(load_cert(root / "server" / "server.crt"))
    assert (server.common_name, server.unit) == ("coordinator", SERVER_UNIT)
    listing = capsys.readouterr().out
    assert "site-a" in listing and "coordinator" in listing and "valid" in listing


def test_revoke_writes_a_signed_crl_for_the_coordinator(pki: Authority) -> None:
    # Prepare
    serial = CertInfo.of(load_cert(pki.node_dir("site-b") / "node.crt")).serial
    identity = CertInfo.of(load_cert(pki.node_dir("site-b") / "identity.crt")).serial
    ca = load_cert(pki.ca_cert)

    # Execute
    before = read_crl(pki.server_dir / "crl.pem", ca)
    pki.revoke("site-b")
    after = read_crl(pki.server_dir / "crl.pem", ca)

    # Assert: the TLS certificate and the secure-aggregation identity go together
    assert before == frozenset()
    assert after == {serial, identity}
    assert [(e.name, e.kind) for e in pki.entries() if e.revoked_at] == [
        ("site-b", "node"),
        ("site-b", "identity"),
    ]


def test_crl_signed_by_another_ca_is_refused(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    other = Authority(tmp_path / "other")
    other.init("Other")

    # Execute
    with pytest.raises(PkiError) as info:
        read_crl(other.crl, load_cert(pki.ca_cert))

    # Assert
    assert "not signed by the consortium CA" in str(info.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["init-ca", "--name", "Again"], "a CA already exists"),
        (["node", "--id", "site-a"], "exists: pass --force"),
        (["node", "--id", "../etc"], "node id '../etc' is not valid"),
        (["revoke", "--id", "nobody"], "no live certificate for 'nobody'"),
        (["server", "--ip", "not-an-ip", "--force"], "not an IP address: 'not-an-ip'"),
        (["node", "--id", "site-c", "--days", "0"], "--days must be >= 1"),
    ],
)
def test_cli_bad_input_is_refused_with_a_message_naming_it(
    pki: Authority, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main([argv[0], "--dir", str(pki.root), *argv[1:]])

    # Assert
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_without_a_ca_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["node", "--dir", str(tmp_path / "empty"), "--id", "site-a"])

    # Assert
    assert code == 2
    assert "run `fedhive certs init-ca" in capsys.readouterr().err


def test_bootstrap_is_idempotent_and_adds_only_new_nodes(pki: Authority) -> None:
    # Prepare
    before = (pki.node_dir("site-a") / "node.crt").read_bytes()

    # Execute
    done = pki.bootstrap("Test Consortium", ["site-a", "site-c"], dns=[], ips=[])

    # Assert
    assert done == ["site-c"]
    assert (pki.node_dir("site-a") / "node.crt").read_bytes() == before


def test_bootstrap_issues_administrators_and_a_status_token_once(pki: Authority) -> None:
    # Execute: twice, as every `docker compose up` does
    first = pki.bootstrap("Test Consortium", [], dns=[], ips=[], admins=["ops"], status_token=True)
    token = pki.status_token.read_text()
    again = pki.bootstrap("Test Consortium", [], dns=[], ips=[], admins=["ops"], status_token=True)

    # Assert: created once, kept after; the token is private and long enough
    assert first == ["administrator ops", "status token"] and again == []
    assert (pki.admin_dir("ops") / "admin.crt").exists() and pki.status_token.read_text() == token
    assert len(token.strip()) >= 32 and pki.status_token.stat().st_mode & 0o077 == 0


def test_bundle_check_names_each_problem(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    other = Authority(tmp_path / "other")
    other.bootstrap("Other", ["site-a"], dns=[], ips=[])
    pki.issue_node("old", days=1, now=utcnow() - dt.timedelta(days=5))
    a, b, old = pki.node_dir("site-a"), pki.node_dir("site-b"), pki.node_dir("old")

    # Execute
    cases = {
        "does not belong": (a / "node.crt", b / "node.key", a / "ca.crt"),
        "was not issued by the CA": (other.node_dir("site-a") / "node.crt",
                                     other.node_dir("site-a") / "node.key", a / "ca.crt"),
        "expired on": (old / "node.crt", old / "node.key", old / "ca.crt"),
        "not found": (a / "missing.crt", a / "node.key", a / "ca.crt"),
        "is not a PEM certificate": (a / "node.key", a / "node.key", a / "ca.crt"),
    }  # fmt: skip
    errors = {}
    for expected, (cert, key, ca) in cases.items():
        with pytest.raises(PkiError) as info:
            check_bundle(cert, key, ca)
        errors[expected] = str(info.value)

    # Assert
    for expected, message in errors.items():
        assert expected in message, message


def test_tls_dir_fills_the_bundle_settings(pki: Authority) -> None:
    # Execute
    server = build_config(ServerConfig, None, {"tls_dir": pki.server_dir})
    client = build_config(ClientConfig, None, {"tls_dir": pki.node_dir("site-a")})

    # Assert
    assert server.tls_cert == pki.server_dir / "server.crt"
    assert server.crl == pki.server_dir / "crl.pem"
    assert client.tls_key == pki.node_dir("site-a") / "node.key"
    assert client.tls_ca == pki.node_dir("site-a") / "ca.crt"


def test_insecure_with_tls_files_is_a_contradiction(pki: Authority) -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        build_config(ServerConfig, None, {"insecure": True, "tls_dir": pki.server_dir})

    # Assert
    assert "insecure = true turns TLS off, but tls_dir" in str(info.value)


def test_coordinator_without_certificates_or_insecure_is_refused() -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        server_tls(ServerConfig())

    # Assert
    assert "mutual TLS is on by default" in str(info.value)
    assert "tls_cert, tls_key, tls_ca not set" in str(info.value)
    assert "--insecure" in str(info.value)


def test_coordinator_key_of_another_certificate_is_refused(pki: Authority) -> None:
    # Prepare
    config = ServerConfig(tls_dir=pki.server_dir, tls_key=pki.node_dir("site-a") / "node.key")

    # Execute
    with pytest.raises(ConfigError) as info:
        server_tls(config)

    # Assert
    assert "does not belong to certificate" in str(info.value)


@pytest.mark.parametrize("allowed", [[], ["site-a", " "]])
def test_an_allow_list_nobody_could_pass_is_refused(allowed: list[str]) -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        build_config(ServerConfig, None, {"allowed_nodes": allowed, "insecure": True})

    # Assert
    assert "allowed_nodes is empty or holds an empty id" in str(info.value)


@pytest.mark.parametrize("argv", [[], ["--insecure", "--tls-dir", "x"]])
def test_health_probe_needs_exactly_one_of_tls_or_insecure(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = health_main(["--server", "127.0.0.1:1", *argv])

    # Assert
    assert code == 2
    assert "exactly one of --tls-dir or --insecure" in capsys.readouterr().err


def test_health_probe_of_nothing_reports_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: nothing listens on port 1
    code = health_main(["--server", "127.0.0.1:1", "--insecure", "--timeout", "2"])

    # Assert
    assert code == 1
    assert capsys.readouterr().out.startswith("UNREACHABLE: UNAVAILABLE")
