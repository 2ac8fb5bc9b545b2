"""Between runs, under mutual TLS, every node-facing call of a coordinator service passes the
same peer gate as during a run (CA, CRL, node certificate): a revoked node and an administrator
certificate are refused before they learn anything, a foreign CA's node fails the handshake, and
a live node still gets the usual answers (no run: retry later)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedhive.common.cli.certs import Authority
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.integration.standing import Running, in_process_service

SERVICE = "/fedhive.proto.v1.Coordinator/"
AUTH = pb.NodeAuth(node_id="site-c", token=b"t" * 16)
CALLS: dict[str, tuple[str, Any]] = {
    "Join": ("unary", pb.JoinRequest(name="site-c", device="cpu", protocol_version=1)),
    "Heartbeat": ("unary", pb.HeartbeatRequest(auth=AUTH)),
    "PullTask": ("stream-out", pb.PullTaskRequest(auth=AUTH, wait_s=0.1)),
    "PushUpdate": ("stream-in", pb.UpdateMessage(header=pb.UpdateHeader(auth=AUTH, round=1))),
    "AwaitRun": ("unary", pb.AwaitRunRequest(name="site-c", wait_s=0.1)),
    "DeclineRun": ("unary", pb.DeclineRunRequest(name="site-c", run_id="abc", reason="no")),
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with in_process_service(tmp_path_factory.mktemp("between"), revoked=("site-c",)) as service:
        yield service


def caller(channel: grpc.Channel, method: str) -> Callable[[], Any]:
    kind, request = CALLS[method]
    ser = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": None}
    if kind == "unary":
        fn = channel.unary_unary(SERVICE + method, **ser)
        return lambda: fn(request, timeout=10)
    if kind == "stream-out":
        fs = channel.unary_stream(SERVICE + method, **ser)
        return lambda: list(fs(request, timeout=10))
    fi = channel.stream_unary(SERVICE + method, **ser)
    return lambda: fi(iter([request]), timeout=10)


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def bundle(running: Running, who: str, tmp_path: Path) -> tuple[Path, str]:
    if who == "admin":
        return running.pki.admin_dir("alice"), "admin"
    if who == "foreign":
        other = Authority(tmp_path / "other")
        other.init("Other Consortium")
        other.issue_node("site-c")
        return other.node_dir("site-c"), "node"
    return running.pki.node_dir(who), "node"


@pytest.mark.parametrize("method", sorted(CALLS))
def test_a_revoked_node_is_refused_between_runs(running: Running, method: str) -> None:
    # Prepare: no run queued or running; site-c's certificate is on the CRL
    channel = running.channel(running.pki.node_dir("site-c"), "node")

    # Execute
    refused = refusal(caller(channel, method))
    channel.close()

    # Assert: refused by the gate, naming the revocation (not "no run is running")
    assert running.service.current() is None
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
    assert "revoked" in (refused.details() or "")


@pytest.mark.parametrize("who", ["foreign", "admin", "site-a"])
def test_between_runs_only_a_live_node_of_the_consortium_is_answered(
    running: Running, who: str, tmp_path: Path
) -> None:
    # Prepare: a foreign CA's node, an administrator, a live node of the consortium
    folder, kind = bundle(running, who, tmp_path)
    channel = running.channel(folder, kind)

    # Execute
    join = refusal(caller(channel, "Join"))
    heartbeat = refusal(caller(channel, "Heartbeat"))
    channel.close()

    # Assert: the handshake fails for a foreign CA; an administrator is not a node; a live
    # node is told there is no run (join: retry later; a session: over)
    codes = (join.code(), heartbeat.code())
    if who == "foreign":
        assert codes == (grpc.StatusCode.UNAVAILABLE,) * 2
        assert "no run" not in (join.details() or "")
    elif who == "admin":
        assert codes == (grpc.StatusCode.PERMISSION_DENIED,) * 2
        assert "not a node certificate" in (join.details() or "")
    else:
        assert codes == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
        assert "no run is running" in (join.details() or "")


def test_between_runs_a_node_off_the_services_allow_list_is_refused(tmp_path: Path) -> None:
    # Prepare: a service whose allow-list names site-a only
    with in_process_service(tmp_path, allowed=("site-a",)) as running:
        channels = [running.channel(running.pki.node_dir(n), "node") for n in ("site-a", "site-b")]

        # Execute
        a, b = (refusal(caller(c, "Join")) for c in channels)
        await_b = refusal(caller(channels[1], "AwaitRun"))
        for channel in channels:
            channel.close()

    # Assert: site-a hears there is no run; site-b is refused by the allow-list, even to wait
    assert a.code() == grpc.StatusCode.UNAVAILABLE and "no run" in (a.details() or "")
    for refused in (b, await_b):
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "allow-list" in (refused.details() or "")
