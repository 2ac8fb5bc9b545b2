"""The standing federation's pieces without a network: wire bounds of AwaitRun/DeclineRun, the
queue of runs (FIFO, cancel, restart), a run's settings (the service's fields are refused) and
administrator certificates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from fedhive.client.standing import StandingNode
from fedhive.common.config import ClientConfig, ServerConfig
from fedhive.common.crypto.pki import create_ca, issue
from fedhive.common.errors import ConfigError, InvalidUpdateError, RunStateError, UnknownRunError
from fedhive.common.wire import serde, serde_standing
from fedhive.common.wire.messages import AwaitRunRequest, RunDecline, RunOffer
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.identity import is_admin
from fedhive.server.service.queue import CANCELLED, FINISHED, QUEUED, RUNNING, RunQueue
from fedhive.server.service.settings import check_settings, compose

TASK = "fedhive.common.tasks.constant:make_task"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (pb.AwaitRunRequest(name="n" * 129), "exceeds 128"),
        (pb.AwaitRunRequest(name="n0\n"), "control characters"),
        (pb.AwaitRunRequest(name="n0", tasks=[TASK] * 65), "approved tasks exceed"),
        (pb.AwaitRunRequest(name="n0", tasks=["no-colon"]), "package.module:factory"),
        (pb.AwaitRunRequest(name="n0", wait_s=math.nan), "finite"),
        (pb.AwaitRunRequest(name="n0", wait_s=-1.0), "finite"),
        (pb.AwaitRunRequest(name="n0", last_run_id="x" * 65), "exceeds 64"),
    ],
)
def test_an_await_run_request_beyond_its_bounds_is_refused(
    message: pb.AwaitRunRequest, problem: str
) -> None:
    with pytest.raises(InvalidUpdateError, match=problem):
        serde_standing.await_run_from_proto(message)


def test_decline_and_offer_and_join_are_bounded() -> None:
    with pytest.raises(InvalidUpdateError, match="names no run"):
        serde_standing.run_decline_from_proto(pb.DeclineRunRequest(name="n0"))
    long = pb.DeclineRunRequest(name="n0", run_id="abc", reason="x" * 10_000)
    assert len(serde_standing.run_decline_from_proto(long).reason) == serde_standing.MAX_REASON
    with pytest.raises(InvalidUpdateError, match=r"package\.module:factory"):
        serde_standing.run_offer_from_proto(pb.RunOffer(run_id="abc", task="import os"))
    with pytest.raises(InvalidUpdateError, match="exceeds 64"):
        serde.join_request_from_proto(pb.JoinRequest(name="n0", run_id="r" * 65))
    offer = serde_standing.run_offer_from_proto(pb.RunOffer(run_id="abc", task=TASK))
    assert (offer.run_id, offer.task) == ("abc", TASK)


def test_the_queue_is_fifo_cancels_only_queued_runs_and_survives_a_restart(tmp_path: Path) -> None:
    # Prepare
    queue = RunQueue(tmp_path / "service.sqlite")
    first = queue.submit({"task": TASK}, "admin:a")
    second = queue.submit({"task": TASK}, "admin:a")
    third = queue.submit({"task": TASK}, "admin:b")

    # Execute
    running = queue.next()
    queue.cancel(second.run_id, "not needed")
    with pytest.raises(RunStateError, match="only a queued run"):
        queue.cancel(first.run_id, "too late")
    queue.close()
    again = RunQueue(tmp_path / "service.sqlite")  # a restart
    resumed = again.next()
    again.end(first.run_id, FINISHED)
    after = again.next()

    # Assert: the running run comes back first, then the next queued one; cancelled is skipped
    assert running is not None and running.run_id == first.run_id
    assert resumed is not None and (resumed.run_id, resumed.state) == (first.run_id, RUNNING)
    assert after is not None and after.run_id == third.run_id
    states = {e.run_id: e.state for e in again.runs()}
    assert states == {first.run_id: FINISHED, second.run_id: CANCELLED, third.run_id: RUNNING}
    with pytest.raises(UnknownRunError):
        again.get("nope")
    assert again.queued() == 0 and QUEUED not in states.values()


def test_a_run_may_not_set_the_services_fields_and_is_validated_like_a_config_file() -> None:
    base = ServerConfig(insecure=True)
    with pytest.raises(ConfigError, match="address belong"):
        check_settings(base, {"task": TASK, "address": "0.0.0.0:1"})
    with pytest.raises(ConfigError, match="rounds: Input should be greater than or equal to 1"):
        check_settings(base, {"task": TASK, "rounds": 0})
    with pytest.raises(ConfigError, match="unknown setting"):
        check_settings(base, {"task": TASK, "roudns": 3})
    config = compose(base, check_settings(base, {"task": TASK, "rounds": 3}), Path("x"))
    assert (config.rounds, config.insecure, config.run_dir) == (3, True, Path("x"))


def test_a_run_inherits_the_services_allow_list_and_may_only_narrow_it() -> None:
    base = ServerConfig(insecure=True, allowed_nodes=("a", "b"))
    inherited = compose(base, {"task": TASK}, Path("x"))
    narrowed = compose(base, {"task": TASK, "allowed_nodes": ["a"]}, Path("x"))
    with pytest.raises(ConfigError, match="names c, outside the coordinator service's"):
        check_settings(base, {"task": TASK, "allowed_nodes": ["a", "c"]})
    assert (inherited.allowed_nodes, narrowed.allowed_nodes) == (("a", "b"), ("a",))


def test_an_administrator_certificate_is_not_a_node_certificate() -> None:
    ca_key, ca_cert = create_ca("Test")
    _, admin = issue(ca_key, ca_cert, "alice", server=False, admin=True)
    _, node = issue(ca_key, ca_cert, "site-a", server=False)
    assert is_admin(admin) and not is_admin(node)


def test_the_audit_table_keeps_its_newest_rows_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fedhive.server.service.queue.MAX_AUDIT", 5)
    queue = RunQueue(tmp_path / "service.sqlite")
    for i in range(8):
        queue.audit("admin:a", "list runs", str(i), "ok")
    assert [r.target for r in queue.audit_log()] == ["3", "4", "5", "6", "7"]


class OfferingTransport:
    """A coordinator that offers one run, then (the node having answered) nothing more."""

    def __init__(self, node: list[StandingNode], offer: RunOffer) -> None:
        self.node, self.offer = node, offer
        self.declined: list[RunDecline] = []
        self.calls = 0

    def await_run(self, request: AwaitRunRequest) -> RunOffer:
        self.calls += 1
        if self.calls > 1:
            self.node[0].stop_event.set()
            return RunOffer()
        return self.offer

    def decline_run(self, decline: RunDecline) -> None:
        self.declined.append(decline)

    def cancel(self) -> None:
        pass


def test_a_standing_node_declines_a_task_its_site_did_not_approve_without_importing_it() -> None:
    # Prepare: a site that approved the constant task only; a run naming a module never imported
    unapproved = "tests.unit.never_imported_task:make_task"
    config = ClientConfig(insecure=True, name="site-c", device="cpu", tasks={TASK: {}})
    holder: list[StandingNode] = []
    transport = OfferingTransport(holder, RunOffer("r1", unapproved))
    built: list[str] = []
    node = StandingNode(config, transport, lambda cfg, run_id: built.append(run_id))  # type: ignore[arg-type,func-returns-value]
    holder.append(node)

    # Execute
    node.run()

    # Assert: declined with the reason, nothing built, the module never imported
    (decline,) = transport.declined
    assert (decline.run_id, decline.task) == ("r1", unapproved)
    assert "not approved by this site" in decline.reason and TASK in decline.reason
    assert built == [] and "tests.unit.never_imported_task" not in sys.modules
    assert node.declined == ["r1"]
