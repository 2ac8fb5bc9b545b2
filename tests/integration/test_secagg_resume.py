"""SecAgg+ across a coordinator crash: the resumed coordinator knows the identity keys of the
nodes that outlived it (they reconnect with their credentials and never join again), re-checked
against their CA certificates under mutual TLS, and a node cannot swap its key within the run.
A node whose certificate is revoked leaves a secure round at once, whatever step it reached."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedhive.common.cli.certs import Authority
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.integration.harness import start_coordinator, start_node, wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_resume import last_round, wait_for_progress
from tests.integration.test_tls import stub

NODES = ["site-a", "site-b", "site-c"]
ROUNDS = 3
CONFIG = """\
secure_aggregation = "secagg+"
secagg_clip = 32.0
secagg_bits = 16
secagg_max_weight = 1024
federated_evaluation = false
heartbeat_interval_s = 0.3
heartbeat_timeout_s = 5.0
min_updates = 3
"""


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority(tmp_path / "pki")
    ca.bootstrap("Test Consortium", NODES, dns=["localhost"], ips=["127.0.0.1"])
    return ca


def coordinator(tmp_path: Path, port: int, pki: Authority, log: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "server.toml"
    config.write_text(CONFIG)
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--config", str(config),
        "--address", f"127.0.0.1:{port}", "--run-dir", str(tmp_path / "run"),
        "--rounds", str(ROUNDS), "--min-nodes", "3", "--no-progress",
        "--task", "fedhive.common.tasks.constant:make_task", "--task-arg", "params=1000",
        "--task-arg", "tensors=3", "--tls-dir", str(pki.server_dir),
    ]  # fmt: skip
    with open(tmp_path / log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def test_secure_rounds_go_on_after_a_coordinator_sigkill(tmp_path: Path, pki: Authority) -> None:
    # Prepare: a SecAgg+ run under mutual TLS, three node processes that outlive the coordinator
    port = free_port()
    first = coordinator(tmp_path, port, pki, "coord0.log")
    logs = [tmp_path / f"{n}.log" for n in NODES]
    nodes = [
        start_node(
            f"127.0.0.1:{port}",
            "x",
            seed=i,
            log=logs[i],
            tls_dir=pki.node_dir(n),
            task_args={"params": 1000, "tensors": 3, "train_s": 0.3},
            max_connect_attempts=200,
            extra=["--backoff-max", "0.5"],
        )
        for i, n in enumerate(NODES)
    ]
    try:
        # Execute: SIGKILL the coordinator once round 1 is committed, start it again
        assert wait_for_progress(tmp_path / "run", 0, first) >= 1, tmp_path / "coord0.log"
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_after = last_round(tmp_path / "run")
        second = coordinator(tmp_path, port, pki, "coord1.log")
        code = second.wait(timeout=120)
        codes = wait_all(nodes)
    finally:
        for proc in nodes:
            proc.kill() if proc.poll() is None else None

    # Assert: the resumed coordinator ran every remaining round securely with the same nodes
    text = (tmp_path / "coord1.log").read_text()
    assert code == 0, text[-3000:]
    assert codes == [0, 0, 0], [p.read_text()[-2000:] for p in logs]
    assert 1 <= killed_after < ROUNDS
    assert last_round(tmp_path / "run") == ROUNDS
    assert "resuming run" in text
    # at least one node came back with its token alone (never joined the resumed coordinator):
    # its key is the one the run store kept, its certificate checked again
    resumed = text.split("resuming run", 1)[1]
    back = {n for n in NODES if f"node {n} is back" in text}
    assert back - {n for n in NODES if f"node {n} joined" in resumed}, text
    assert all("joined run" in p.read_text() for p in logs)


def test_a_node_cannot_swap_its_identity_key_within_a_run(tmp_path: Path, pki: Authority) -> None:
    # Prepare: site-a joined with its identity certificate; the CA then issues it another one
    port = free_port()
    coord = coordinator(tmp_path, port, pki, "coord.log")
    bundle = pki.node_dir("site-a")
    channel, client = stub(f"127.0.0.1:{port}", bundle, pki.ca_cert)

    def der() -> bytes:
        cert = x509.load_pem_x509_certificate((bundle / "identity.crt").read_bytes())
        return cert.public_bytes(serialization.Encoding.DER)

    def join(cert: bytes) -> pb.JoinReply:
        request = pb.JoinRequest(
            name="a", device="cpu", num_examples=1, protocol_version=1, identity_cert=cert
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                reply: pb.JoinReply = client.Join(request, timeout=10)
                return reply
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    try:
        original = der()
        join(original)
        pki.issue_identity("site-a")

        # Execute: join again with the new key, then with the original one
        with pytest.raises(grpc.RpcError) as info:
            join(der())
        again = join(original)
    finally:
        channel.close()
        coord.kill()
        coord.wait()

    # Assert: the new key is refused, naming why; the original one still joins
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another identity key" in info.value.details()
    assert again.auth.node_id == "site-a"


class RevokeFirstUploader:
    """Round listener: revokes the victim's certificates once the first masked upload of round 1
    was folded (the victim trains fastest, so that upload is its own)."""

    def __init__(self, pki: Authority, victim: str) -> None:
        self.pki, self.victim = pki, victim
        self.revoked = threading.Event()

    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        pass

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        if round_ == 1 and received == 1 and not self.revoked.is_set():
            self.pki.revoke(self.victim)
            self.revoked.set()

    def round_closed(self, event: Mapping[str, Any]) -> None:
        pass


def test_a_node_revoked_after_its_masked_upload_leaves_the_secure_round_at_once(
    tmp_path: Path, pki: Authority
) -> None:
    # Prepare: a secure round under mutual TLS whose unmask step would wait STEP_S for a node;
    # site-a uploads first and is revoked then, while the others still train
    step_s = 20.0
    listener = RevokeFirstUploader(pki, "site-a")
    settings = {
        "secure_aggregation": "secagg+", "secagg_clip": 32.0, "secagg_bits": 16,
        "secagg_max_weight": 1024, "secagg_step_timeout_s": step_s,
        "heartbeat_interval_s": 0.3, "heartbeat_timeout_s": 30.0,
    }  # fmt: skip
    coord = start_coordinator(
        tmp_path, listener, rounds=1, min_nodes=3, insecure=False, tls_dir=pki.server_dir,
        **settings,
    )  # fmt: skip
    logs = [tmp_path / f"{n}.log" for n in NODES]
    train_s = {"site-a": 0.0, "site-b": 1.5, "site-c": 1.5}
    procs = [
        start_node(
            coord.address,
            "x",
            seed=i,
            log=logs[i],
            tls_dir=pki.node_dir(n),
            task_args={"params": 1000, "tensors": 3, "train_s": train_s[n]},
        )
        for i, n in enumerate(NODES)
    ]

    # Execute
    history = coord.join(timeout=90)
    wait_all(procs)

    # Assert: the round committed without waiting out the unmask step for the revoked node
    (record,) = [e for e in history if e["event"] == "round"]
    assert listener.revoked.is_set()
    assert record["committed"], record
    assert "site-a" in record["dropped"], record
    assert record["duration_s"] < step_s / 2, record
