"""The control plane of a coordinator service over mutual TLS, with real processes: an
administrator submits, watches and stops runs with the `fedhive run` CLI; a node certificate, a
revoked or foreign-CA administrator are refused there, and an administrator cannot join as a node;
every control call is audited with its caller."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedhive.common.cli.certs import Authority
from fedhive.proto.v1 import control_pb2 as cpb
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.integration.harness import wait_all
from tests.integration.standing import (
    CLI,
    CONSTANT,
    CONSTANT_ARGS,
    queue_rows,
    run_settings,
    start_service,
    start_standing_node,
    wait_for,
    write_toml,
)
from tests.integration.test_node_lifecycle import free_port

CONTROL = "/fedhive.proto.v1.Control/"


@dataclass
class Federation:
    root: Path
    pki: Authority
    state: Path
    port: int
    service: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(
        self, *args: str, admin: str = "alice", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        bundle = ["--tls-dir", str(self.pki.admin_dir(admin)), "--server", self.address]
        return subprocess.run(
            [*CLI, command, *rest, *bundle], capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("control")
    pki = Authority(root / "pki")
    pki.bootstrap("Test Consortium", ["site-a", "site-b"], dns=["localhost"], ips=["127.0.0.1"])
    pki.issue_admin("alice")
    pki.issue_admin("bob")
    pki.revoke("bob")
    state, port = root / "state", free_port()
    service = start_service(state, port, root / "service.log", tls_dir=pki.server_dir)
    fed = Federation(root, pki, state, port, service)
    wait_for(
        lambda: "listening on port" in (root / "service.log").read_text(),
        60,
        "the service",
        service,
    )
    yield fed
    service.send_signal(signal.SIGTERM)
    try:
        service.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.kill()


def control_channel(fed: Federation, key: Path, cert: Path, ca: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    return grpc.secure_channel(fed.address, creds)


def list_runs(channel: grpc.Channel) -> cpb.RunList:
    call = channel.unary_unary(
        CONTROL + "ListRuns",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=cpb.RunList.FromString,
    )
    result: cpb.RunList = call(cpb.ListRunsRequest(), timeout=10)
    return result


def audit(fed: Federation) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(f"file:{fed.state / 'service.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT caller, action, target, outcome FROM audit ORDER BY id")
        return [tuple(map(str, r)) for r in rows.fetchall()]  # type: ignore[misc]


def test_an_administrator_submits_watches_and_stops_runs_through_the_cli(
    federation: Federation,
) -> None:
    # Prepare: a standing node of site-a (its own mTLS bundle) approving the constant task; two
    # long runs (the node trains 0.2 s per round) and one with an invalid setting
    fed = federation
    long = run_settings(
        CONSTANT, rounds=500, min_nodes=1, task_args={**CONSTANT_ARGS, "train_s": 0.2}
    )
    first = write_toml(fed.root / "first.toml", long)
    second = write_toml(fed.root / "second.toml", long)
    bad = write_toml(fed.root / "bad.toml", run_settings(CONSTANT, rounds=0))
    approved = {CONSTANT: {"task_args": {**CONSTANT_ARGS, "train_s": 0.2}}}
    node, node_log = start_standing_node(
        fed.root, fed.port, "site-a", approved, tls_dir=fed.pki.node_dir("site-a")
    )

    try:
        # Execute: submit both; the invalid one is refused; cancel the queued one; stop the
        # running one once it has committed a round; then watch it to its end
        submitted = [fed.cli("run", "submit", str(p)) for p in (first, second)]
        refused = fed.cli("run", "submit", str(bad))
        run_a, run_b = (s.stdout.split()[1] for s in submitted)
        cancelled = fed.cli("run", "stop", run_b, "--reason", "not needed")
        admin = fed.pki.admin_dir("alice")
        channel = control_channel(fed, admin / "admin.key", admin / "admin.crt", fed.pki.ca_cert)
        wait_for(
            lambda: any(r.run_id == run_a and r.committed_rounds for r in list_runs(channel).runs),
            120,
            "a committed round",
            fed.service,
            node,
        )
        channel.close()
        nodes = fed.cli("nodes")
        stopped = fed.cli("run", "stop", run_a, "--reason", "enough")
        watched = fed.cli("run", "status", run_a)
        listed = fed.cli("run", "list")
        alive = node.poll() is None
    finally:
        node.send_signal(signal.SIGTERM)
        codes = wait_all([node], timeout=30)

    # Assert: the CLI said what happened; the queue and the audit table agree
    assert [s.returncode for s in submitted] == [0, 0], [s.stderr for s in submitted]
    assert refused.returncode == 1 and "rounds" in refused.stderr
    assert "greater than or equal to 1" in refused.stderr
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert "site-a" in nodes.stdout and "constant" in nodes.stdout, nodes.stderr
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert "round   1:" in watched.stdout and f"run {run_a} stopped" in watched.stdout
    assert run_a in listed.stdout and run_b in listed.stdout
    assert alive and codes == [0], node_log.read_text()[-3000:]
    states = {r: s for r, s, _ in queue_rows(fed.state)}
    assert states[run_a] == "stopped" and states[run_b] == "cancelled"
    trail = audit(fed)
    assert ("admin:alice", "submit", "", "ok") in trail
    assert ("admin:alice", "stop run", run_a, "ok") in trail
    assert any(
        c == "admin:alice" and a == "submit" and o.startswith("refused") for c, a, _, o in trail
    )


def test_a_standing_node_shows_its_run_and_leaves_it_cleanly_on_sigterm(
    federation: Federation,
) -> None:
    # Prepare: site-b's standing node taking part in a long run
    fed = federation
    task_args = {**CONSTANT_ARGS, "train_s": 0.2}
    settings = run_settings(CONSTANT, rounds=500, min_nodes=1, task_args=task_args)
    run_id = fed.cli(
        "run", "submit", str(write_toml(fed.root / "b.toml", settings))
    ).stdout.split()[1]
    node, node_log = start_standing_node(
        fed.root,
        fed.port,
        "site-b",
        {CONSTANT: {"task_args": task_args}},
        tls_dir=fed.pki.node_dir("site-b"),
    )
    admin = fed.pki.admin_dir("alice")
    channel = control_channel(fed, admin / "admin.key", admin / "admin.crt", fed.pki.ca_cert)
    try:
        wait_for(
            lambda: any(r.run_id == run_id and r.committed_rounds for r in list_runs(channel).runs),
            120,
            "a committed round",
            fed.service,
            node,
        )
        nodes = fed.cli("nodes")

        # Execute
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=30)
    finally:
        channel.close()
        node.kill() if node.poll() is None else None
        fed.cli("run", "stop", run_id)

    # Assert: listed in its run; exit 0, and the run saw it leave
    line = next(x for x in nodes.stdout.splitlines() if "site-b" in x)
    assert run_id in line, nodes.stdout
    assert code == 0, node_log.read_text()[-3000:]
    wait_for(
        lambda: "node site-b left (node stopping)" in (fed.root / "service.log").read_text(),
        10,
        "the leave",
    )


@pytest.mark.parametrize("who", ["node", "revoked-admin", "foreign-admin"])
def test_only_a_live_administrator_of_the_consortium_may_call_the_control_plane(
    federation: Federation, who: str, tmp_path: Path
) -> None:
    # Prepare: a node's bundle, a revoked administrator's, an administrator of another CA
    fed = federation
    ca = fed.pki.ca_cert
    if who == "node":
        folder = fed.pki.node_dir("site-a")
        key, cert = folder / "node.key", folder / "node.crt"
    elif who == "revoked-admin":
        key, cert = fed.pki.admin_dir("bob") / "admin.key", fed.pki.admin_dir("bob") / "admin.crt"
    else:
        other = Authority(tmp_path / "other")
        other.init("Other Consortium")
        other.issue_admin("mallory")
        key, cert = (
            other.admin_dir("mallory") / "admin.key",
            other.admin_dir("mallory") / "admin.crt",
        )
    channel = control_channel(fed, key, cert, ca)

    # Execute
    with pytest.raises(grpc.RpcError) as caught:
        list_runs(channel)
    channel.close()

    # Assert: refused; by the control plane itself (and audited) unless the handshake already was
    if who == "foreign-admin":
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        why = "not an administrator certificate" if who == "node" else "revoked"
        assert why in (caught.value.details() or "")
        assert any(c.startswith("refused:") and why in o for c, _, _, o in audit(fed))


def test_an_administrator_certificate_cannot_join_as_a_node(federation: Federation) -> None:
    # Prepare
    fed = federation
    folder = fed.pki.admin_dir("alice")
    channel = control_channel(fed, folder / "admin.key", folder / "admin.crt", fed.pki.ca_cert)
    join = channel.unary_unary(
        "/fedhive.proto.v1.Coordinator/AwaitRun",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.RunOffer.FromString,
    )

    # Execute
    with pytest.raises(grpc.RpcError) as caught:
        join(pb.AwaitRunRequest(name="alice", wait_s=0.1), timeout=10)
    channel.close()

    # Assert
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a node certificate" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (pb.AwaitRunRequest(name="x", wait_s=float("nan")), "finite"),
        (pb.AwaitRunRequest(name="x", tasks=["a.b:c"] * 65), "approved tasks exceed"),
        (pb.AwaitRunRequest(name="x", tasks=["a.b:c\x00"]), "control characters"),
    ],
)
def test_a_hostile_wait_for_a_run_is_refused(
    federation: Federation, request_: pb.AwaitRunRequest, problem: str
) -> None:
    # Prepare: a real node certificate, hand-built requests beyond the wire's bounds
    fed = federation
    folder = fed.pki.node_dir("site-a")
    channel = control_channel(fed, folder / "node.key", folder / "node.crt", fed.pki.ca_cert)
    await_run = channel.unary_unary(
        "/fedhive.proto.v1.Coordinator/AwaitRun",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.RunOffer.FromString,
    )

    # Execute
    with pytest.raises(grpc.RpcError) as caught:
        await_run(request_, timeout=10)
    channel.close()

    # Assert
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (caught.value.details() or "")


def test_a_named_run_is_submitted_once_and_its_name_is_bounded(federation: Federation) -> None:
    # Prepare: a run's settings, the same run's settings with another round count; an
    # administrator's channel for hand-built requests
    fed = federation
    settings = run_settings(CONSTANT, rounds=500, min_nodes=1)
    path = write_toml(fed.root / "nightly.toml", settings)
    other = write_toml(fed.root / "nightly-4.toml", {**settings, "rounds": 4})
    admin = fed.pki.admin_dir("alice")
    channel = control_channel(fed, admin / "admin.key", admin / "admin.crt", fed.pki.ca_cert)
    submit = channel.unary_unary(
        CONTROL + "SubmitRun",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=cpb.RunInfo.FromString,
    )

    # Execute: submit it, again, stop it, again once it has ended; reuse its name for another
    # run; send names beyond the rule
    first = fed.cli("run", "submit", str(path), "--name", "nightly")
    run_id = first.stdout.split()[1]
    again = fed.cli("run", "submit", str(path), "--name", "nightly")
    fed.cli("run", "stop", run_id)
    ended = submit(cpb.SubmitRunRequest(settings_toml=path.read_text(), name="nightly"), timeout=10)
    reused = fed.cli("run", "submit", str(other), "--name", "nightly")
    refusals = []
    for name in ("../nightly", "n" * 10_000, "night\x00ly"):
        with pytest.raises(grpc.RpcError) as caught:
            submit(cpb.SubmitRunRequest(settings_toml=path.read_text(), name=name), timeout=10)
        refusals.append((caught.value.code(), caught.value.details() or ""))
    named = [r for r in list_runs(channel).runs if r.name == "nightly"]
    channel.close()
    listed = fed.cli("run", "list")

    # Assert: one run of that name, whatever was sent; each answer said so; audited
    assert first.returncode == 0 and f'run {run_id} "nightly" ' in first.stdout, first.stderr
    assert again.returncode == 0, again.stderr
    assert f"run nightly already submitted as {run_id} (" in again.stdout
    assert again.stdout.rstrip().endswith("): not submitted again")
    assert ended.existed and ended.run_id == run_id and ended.state == "stopped"
    assert reused.returncode == 1 and "ALREADY_EXISTS" in reused.stderr
    assert f"taken by run {run_id} (stopped) with other settings" in reused.stderr
    for code, details in refusals:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not 1 to 64 characters of A-Z a-z 0-9 . _ -" in details
    assert [r.run_id for r in named] == [run_id]
    row = next(line for line in listed.stdout.splitlines() if run_id in line)
    assert "nightly" in row and "stopped" in row, listed.stdout
    trail = audit(fed)
    assert ("admin:alice", "queued", run_id, "ok") in trail
    assert [o for c, a, t, o in trail if a == "submit" and t == "nightly"] == [
        "ok",
        "existing",
        "existing",
        "refused: " + reused.stderr.split("ALREADY_EXISTS: ")[1].strip(),
    ]
