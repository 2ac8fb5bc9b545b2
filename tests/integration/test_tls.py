"""Mutual TLS over real gRPC: a federation with certificates, and each refusal the issue names."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedhive.client.health import probe
from fedhive.common.cli.certs import Authority
from fedhive.common.crypto.pki import utcnow
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.integration.harness import CoordinatorThread, start_coordinator, start_node, wait_all

NODES = ["site-a", "site-b", "site-c"]


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority(tmp_path / "pki")
    ca.bootstrap("Test Consortium", NODES, dns=["localhost"], ips=["127.0.0.1"])
    return ca


def mtls_coordinator(tmp_path: Path, pki: Authority, **overrides: object) -> CoordinatorThread:
    settings: dict[str, object] = {"insecure": False, "tls_dir": pki.server_dir}
    settings.update(overrides)
    return start_coordinator(tmp_path, **settings)


def stub(
    address: str, bundle: Path | None, ca: Path
) -> tuple[grpc.Channel, pb_grpc.CoordinatorStub]:
    key = chain = None
    if bundle is not None:
        kind = "server" if (bundle / "server.crt").exists() else "node"
        key, chain = (bundle / f"{kind}.key").read_bytes(), (bundle / f"{kind}.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    channel = grpc.secure_channel(address, creds)
    return channel, pb_grpc.CoordinatorStub(channel)


def join(stub_: pb_grpc.CoordinatorStub, name: str = "claimed-name") -> pb.JoinReply:
    request = pb.JoinRequest(name=name, device="cpu", num_examples=10, protocol_version=1)
    reply: pb.JoinReply = stub_.Join(request, timeout=10)
    return reply


def test_mtls_federation_round_trip_with_identities_from_certificates(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: a coordinator requiring mTLS, two node processes with their bundles
    coord = mtls_coordinator(tmp_path, pki, rounds=2, min_nodes=2)
    health = probe(coord.address, bundle=_files(pki.node_dir("site-c")), timeout_s=10)
    logs = [tmp_path / f"{n}.log" for n in NODES[:2]]
    procs = [
        start_node(coord.address, "ignored", seed=i, log=logs[i], tls_dir=pki.node_dir(n))
        for i, n in enumerate(NODES[:2])
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: both rounds committed, the node ids are the certificates' names
    assert codes == [0, 0], [p.read_text() for p in logs]
    assert health == "SERVING"
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["committed"] for e in rounds] == [True, True]
    assert all(e["reported"] == ["site-a", "site-b"] for e in rounds)
    assert "identity site-a" in logs[0].read_text()
    events = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["event"] == "finished"


def _files(folder: Path) -> tuple[Path, Path, Path]:
    return folder / "node.crt", folder / "node.key", folder / "ca.crt"


def test_health_is_serving_while_the_run_lives_and_not_after_stop(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    bundle = (pki.server_dir / "server.crt", pki.server_dir / "server.key", pki.ca_cert)
    live = probe(coord.address, bundle=bundle, timeout_s=10)

    # Execute
    coord.running.health.enter_graceful_shutdown()
    stopping = probe(coord.address, bundle=bundle, timeout_s=10)
    coord.stop()

    # Assert
    assert live == "SERVING"
    assert stopping == "NOT_SERVING"


def handshake_refused(address: str, bundle: Path | None, ca: Path) -> grpc.RpcError:
    channel, s = stub(address, bundle, ca)
    with pytest.raises(grpc.RpcError) as info:
        join(s)
    channel.close()
    return info.value


def test_certificate_from_another_ca_fails_the_handshake(
    tmp_path: Path, pki: Authority, capfd: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a second consortium's node that also trusts our CA
    other = Authority(tmp_path / "other")
    other.bootstrap("Other Consortium", ["site-a"], dns=["localhost"], ips=["127.0.0.1"])
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)

    # Execute
    error = handshake_refused(coord.address, other.node_dir("site-a"), pki.ca_cert)

    # Assert: refused before any call reaches the coordinator; the only trace on the
    # coordinator's side is gRPC's own log line (the README says so: no hook, no peer address)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert coord.running.coordinator.nodes() == {}
    coord.stop()
    assert "Handshake failed with error SSL_ERROR_SSL" in capfd.readouterr().err


def test_node_with_another_cas_bundle_exits_and_its_log_says_what_to_fix(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: the node holds a complete bundle, but from another consortium
    other = Authority(tmp_path / "other")
    other.bootstrap("Other Consortium", ["site-a"], dns=["localhost"], ips=["127.0.0.1"])
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    log = tmp_path / "node.log"

    # Execute: retrying cannot help, so the node must stop at its first attempt
    proc = start_node(
        coord.address,
        "x",
        seed=0,
        log=log,
        tls_dir=other.node_dir("site-a"),
        max_connect_attempts=50,
    )
    (code,) = wait_all([proc], timeout=30)

    # Assert
    text = log.read_text()
    assert code == 3, text
    assert "TLS handshake failed" in text and "CERTIFICATE_VERIFY_FAILED" in text
    assert "its ca.crt is not the CA that issued the coordinator's certificate" in text
    assert "retrying" not in text
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_node_dialing_a_name_the_coordinators_certificate_lacks_stops_with_a_hint(
    tmp_path: Path,
) -> None:
    # Prepare: the coordinator's certificate names only coordinator.example.org
    named = Authority(tmp_path / "named")
    named.bootstrap("Named Consortium", ["site-a"], dns=["coordinator.example.org"], ips=[])
    coord = start_coordinator(tmp_path, insecure=False, tls_dir=named.server_dir)
    log = tmp_path / "node.log"

    # Execute: the node dials 127.0.0.1
    proc = start_node(
        coord.address, "x", seed=0, log=log, tls_dir=named.node_dir("site-a"),
        max_connect_attempts=50,
    )  # fmt: skip
    (code,) = wait_all([proc], timeout=30)

    # Assert: it stops at once and says what to set
    text = log.read_text()
    assert code == 3, text
    assert "Hostname Verification Check failed" in text and "--tls-server-name" in text
    assert "retrying" not in text
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_client_without_a_certificate_fails_the_handshake(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)

    # Execute
    error = handshake_refused(coord.address, None, pki.ca_cert)
    plain = grpc.insecure_channel(coord.address)
    with pytest.raises(grpc.RpcError) as info:
        join(pb_grpc.CoordinatorStub(plain))
    plain.close()

    # Assert
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_expired_certificate_fails_the_handshake_and_the_node_says_so(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: a certificate that expired two days ago
    pki.issue_node("old-site", days=1, now=utcnow() - dt.timedelta(days=3))
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    log = tmp_path / "node.log"

    # Execute
    error = handshake_refused(coord.address, pki.node_dir("old-site"), pki.ca_cert)
    proc = start_node(coord.address, "x", seed=0, log=log, tls_dir=pki.node_dir("old-site"))
    (code,) = wait_all([proc])

    # Assert: the handshake refuses it; the node process refuses to start and says what to do
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    text = log.read_text()
    assert code == 2, text
    assert "old-site) expired on" in text and "fedhive certs node --id old-site" in text
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_revoked_certificate_is_refused_and_named(
    tmp_path: Path, pki: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    pki.revoke("site-b")
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    channel, s = stub(coord.address, pki.node_dir("site-b"), pki.ca_cert)

    # Execute
    with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as info:
        join(s)
    channel.close()

    # Assert
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node 'site-b'" in (info.value.details() or "")
    assert "is revoked" in (info.value.details() or "")
    assert any("refused peer site-b" in r.getMessage() for r in caplog.records)
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_revocation_while_joined_is_read_and_the_node_is_removed(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: site-a joins and heartbeats under mTLS
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    channel, s = stub(coord.address, pki.node_dir("site-a"), pki.ca_cert)
    reply = join(s)
    s.Heartbeat(pb.HeartbeatRequest(auth=reply.auth), timeout=10)

    # Execute: the operator revokes site-a; the coordinator re-reads its CRL on the next call
    pki.revoke("site-a")
    with pytest.raises(grpc.RpcError) as info:
        s.Heartbeat(pb.HeartbeatRequest(auth=reply.auth), timeout=10)
    channel.close()

    # Assert
    assert reply.auth.node_id == "site-a"
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    record = coord.running.coordinator.nodes()["site-a"]
    assert record.finished and not record.alive
    coord.stop()


def test_node_not_on_the_allow_list_is_refused(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    coord = mtls_coordinator(
        tmp_path, pki, rounds=1, min_nodes=3, allowed_nodes=("site-a", "site-b")
    )
    channel, s = stub(coord.address, pki.node_dir("site-c"), pki.ca_cert)

    # Execute
    with pytest.raises(grpc.RpcError) as info:
        join(s)
    channel.close()

    # Assert
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node 'site-c' is not on the coordinator's allow-list" in (info.value.details() or "")
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


def test_a_node_cannot_use_another_nodes_token(tmp_path: Path, pki: Authority) -> None:
    # Prepare: site-a joins; site-b has learned site-a's token
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    ch_a, a = stub(coord.address, pki.node_dir("site-a"), pki.ca_cert)
    ch_b, b = stub(coord.address, pki.node_dir("site-b"), pki.ca_cert)
    stolen = join(a).auth

    # Execute
    with pytest.raises(grpc.RpcError) as info:
        b.Heartbeat(pb.HeartbeatRequest(auth=stolen), timeout=10)
    ch_a.close()
    ch_b.close()

    # Assert
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate of 'site-b' cannot act for node 'site-a'" in (info.value.details() or "")
    coord.stop()


def test_the_coordinators_own_certificate_cannot_join_as_a_node(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    channel, s = stub(coord.address, pki.server_dir, pki.ca_cert)

    # Execute
    with pytest.raises(grpc.RpcError) as info:
        join(s)
    channel.close()

    # Assert
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a node certificate" in (info.value.details() or "")
    coord.stop()


def test_revoked_node_process_stops_and_says_why(tmp_path: Path, pki: Authority) -> None:
    # Prepare
    pki.revoke("site-c")
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3)
    log = tmp_path / "node.log"

    # Execute
    proc = start_node(coord.address, "x", seed=0, log=log, tls_dir=pki.node_dir("site-c"))
    (code,) = wait_all([proc])

    # Assert: exit 1 at once (no retry loop), with the reason and who to ask
    text = log.read_text()
    assert code == 1, text
    assert "the coordinator refuses this node's identity" in text
    assert "the certificate of node 'site-c'" in text and "is revoked" in text
    assert coord.running.coordinator.nodes() == {}
    coord.stop()


SECURE = {
    "secure_aggregation": "secagg+",
    "secagg_clip": 32.0,
    "secagg_bits": 16,
    "secagg_max_weight": 1024,
}


def test_secure_aggregation_under_mtls_with_ca_certified_identities(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: three node processes whose bundles carry identity.key + identity.crt
    coord = mtls_coordinator(tmp_path, pki, rounds=2, min_nodes=3, **SECURE)
    logs = [tmp_path / f"{n}.log" for n in NODES]
    procs = [
        start_node(coord.address, "ignored", seed=i, log=logs[i], tls_dir=pki.node_dir(n))
        for i, n in enumerate(NODES)
    ]

    # Execute
    history = coord.join(timeout=180)
    codes = wait_all(procs)

    # Assert: secure rounds with all three, each node's key relayed with its CA certificate
    assert codes == [0, 0, 0], [p.read_text() for p in logs]
    rounds = [e for e in history if e["event"] == "round"]
    assert [(e["committed"], e["reported"]) for e in rounds] == [(True, NODES)] * 2
    nodes = coord.running.coordinator.nodes()
    assert all(nodes[n].identity_cert for n in NODES)
    assert all(e["bytes_in"] == 3 * 4 * 1001 for e in rounds)  # masked words, not floats


def test_join_with_another_nodes_identity_certificate_is_refused(
    tmp_path: Path, pki: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: site-a's TLS certificate, site-b's identity certificate
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=1, join_timeout_s=5.0)
    identity = (pki.node_dir("site-b") / "identity.crt").read_bytes()
    der = x509.load_pem_x509_certificate(identity).public_bytes(serialization.Encoding.DER)
    channel, s = stub(coord.address, pki.node_dir("site-a"), pki.node_dir("site-a") / "ca.crt")
    request = pb.JoinRequest(
        name="x", device="cpu", num_examples=1, protocol_version=1, identity_cert=der
    )

    # Execute
    with (
        caplog.at_level(logging.WARNING, logger="fedhive.server"),
        pytest.raises(grpc.RpcError) as info,
    ):
        s.Join(request, timeout=10)
    channel.close()
    coord.stop()

    # Assert: refused, named, and the node never registered
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names 'site-b', not 'site-a'" in str(info.value.details())
    assert "refused node site-a" in caplog.text
    assert "site-a" not in coord.running.coordinator.nodes()


def test_one_member_cannot_hold_more_than_two_upload_streams(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: two members' channels; a header must come within 1 s
    coord = mtls_coordinator(tmp_path, pki, rounds=1, min_nodes=3, header_timeout_s=1.0)
    ch_a, a = stub(coord.address, pki.node_dir("site-a"), pki.ca_cert)
    ch_b, b = stub(coord.address, pki.node_dir("site-b"), pki.ca_cert)
    release = threading.Event()

    def silent() -> Iterator[pb.UpdateMessage]:
        release.wait(30)
        return
        yield  # sends nothing

    # Execute: site-a opens four silent upload streams, site-b one
    a_calls = [a.PushUpdate.future(silent()) for _ in range(4)]
    b_call = b.PushUpdate.future(silent())
    a_codes = sorted(str(f.exception(timeout=10).code()) for f in a_calls)
    b_code = b_call.exception(timeout=10).code()
    details = [f.exception().details() for f in a_calls]
    release.set()
    ch_a.close()
    ch_b.close()

    # Assert: two of site-a's were refused at once (naming it), two held until the header
    # timeout; site-b's own stream was admitted all the same (then cut off without a header)
    assert a_codes == sorted(["StatusCode.CANCELLED"] * 2 + ["StatusCode.RESOURCE_EXHAUSTED"] * 2)
    assert sum("site-a already has 2 such calls open" in (d or "") for d in details) == 2
    assert b_code == grpc.StatusCode.CANCELLED
    coord.stop()
