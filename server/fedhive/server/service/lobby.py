"""Where standing nodes wait between runs: ``AwaitRun`` and ``DeclineRun``.

A standing node long-polls :meth:`Lobby.await_run` (each call is its heartbeat while it waits);
when a run is running that it may take part in (the run's ``allowed_nodes``, if any, names it) and
that it did not just take part in or decline, the call returns the run's id and task import path.
The node decides itself, from its own configuration, whether it runs that task: it joins the run
(``JoinRequest.run_id``) or declines it (:meth:`Lobby.decline`), and the decline is written to the
run's record (``events.jsonl``: ``{"event": "declined", "node", "task", "reason"}``). No code
travels. The lobby also keeps what ``fedhive nodes`` lists: identity, device, approved tasks,
last seen, the run each node was last offered. Its size is bounded (``max_registered_nodes``);
a node silent for ``node_expiry_s`` is forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import grpc

from fedhive.common.crypto.pki import check_node_id
from fedhive.common.errors import (
    FedhiveError,
    InvalidUpdateError,
    LimitExceededError,
    UnknownRunError,
)
from fedhive.common.wire import serde_standing
from fedhive.common.wire.messages import AwaitRunRequest, RunDecline, RunOffer
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.identity import PeerGate
from fedhive.server.limits import wire_wait
from fedhive.server.servicer import _checked, _proto, _serialize, _status

if TYPE_CHECKING:
    from fedhive.server.service.service import Service

log = logging.getLogger("fedhive.server.service")

MAX_AWAIT_S = 60.0
AWAIT_CHECK_S = 0.5  # a waiting call checks this often whether its caller is still there
RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class StandingNode:
    node_id: str
    device: str
    tasks: tuple[str, ...]
    last_seen: float  # time.time()
    run_id: str = ""  # the run it was last offered
    declined: str = ""  # the run it last declined


class Lobby:
    def __init__(self, service: Service, gate: PeerGate | None) -> None:
        self.service = service
        self.gate = gate
        self._cv = threading.Condition()
        self._nodes: dict[str, StandingNode] = {}
        self._closed = False

    # ------------------------------------------------------------------ state

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def nodes(self) -> list[StandingNode]:
        """The standing nodes; one taking part in the running run was last seen by that run."""
        current = self.service.current()
        live: dict[str, float] = {}
        if current is not None:
            now, mono = time.time(), time.monotonic()
            for joined in current.coordinator.nodes().values():
                if joined.alive:
                    live[joined.peer_id or joined.name] = now - (mono - joined.last_seen)
        with self._cv:
            for nid, seen in live.items():
                rec = self._nodes.get(nid)
                if rec is not None and seen > rec.last_seen:
                    self._nodes[nid] = replace(rec, last_seen=seen)
            self._expire(time.time())
            return sorted(self._nodes.values(), key=lambda n: n.node_id)

    def _expire(self, now: float) -> None:
        """Forget nodes silent for node_expiry_s, but not those taking part in the running run
        (they call that run's coordinator, not the lobby)."""
        expiry = self.service.base.node_expiry_s
        current = self.service.current()
        running = current.run_id if current is not None else ""
        for nid, rec in list(self._nodes.items()):
            busy = running and rec.run_id == running and rec.declined != running
            if now - rec.last_seen > expiry and not busy:
                del self._nodes[nid]

    def _seen(self, node_id: str, req: AwaitRunRequest | None = None) -> StandingNode:
        now = time.time()
        known = self._nodes.get(node_id)
        if known is None:
            self._expire(now)
            if len(self._nodes) >= self.service.base.max_registered_nodes:
                raise LimitExceededError(
                    f"{len(self._nodes)} standing nodes already wait (max_registered_nodes)"
                )
            known = StandingNode(node_id, "", (), now)
        if req is not None:
            known = replace(known, device=req.device, tasks=req.tasks, last_seen=now)
        else:
            known = replace(known, last_seen=now)
        self._nodes[node_id] = known
        return known

    # ------------------------------------------------------------------ node-facing

    def _offer(self, node_id: str, last_run_id: str) -> RunOffer | None:
        current = self.service.current()
        if current is None:
            return None
        run_id = current.run_id
        config = current.coordinator.config
        if run_id == last_run_id:
            return None
        if config.allowed_nodes is not None and node_id not in config.allowed_nodes:
            return None
        return RunOffer(run_id, config.task)

    def await_run(
        self, req: AwaitRunRequest, peer_id: str | None, active: Callable[[], bool] | None = None
    ) -> RunOffer:
        node_id = peer_id or _claimed(req.name)
        wait_s = wire_wait(req.wait_s, "AwaitRun wait_s", MAX_AWAIT_S)
        deadline = time.monotonic() + wait_s
        with self._cv:
            self._seen(node_id, req)
            while True:
                offer = self._offer(node_id, req.last_run_id)
                if offer is not None:
                    self._nodes[node_id] = replace(self._nodes[node_id], run_id=offer.run_id)
                    log.info("run %s offered to node %s (%s)", offer.run_id, node_id, offer.task)
                    return offer
                remaining = deadline - time.monotonic()
                gone = active is not None and not active()
                if remaining <= 0 or gone or self._closed or self.service.stopping:
                    return RunOffer(retry_after_s=RETRY_AFTER_S if self._closed else 0.0)
                self._cv.wait(min(remaining, AWAIT_CHECK_S))
                self._seen(node_id)

    def decline(self, d: RunDecline, peer_id: str | None) -> None:
        node_id = peer_id or _claimed(d.name)
        reason = d.reason or "no reason given"
        current = self.service.current()
        if current is None or current.run_id != d.run_id:
            raise UnknownRunError(f"run {d.run_id!r} is not running")
        with self._cv:
            self._nodes[node_id] = replace(self._seen(node_id), declined=d.run_id)
        current.coordinator.store.append_event(
            {
                "event": "declined",
                "node": node_id,
                "task": current.coordinator.config.task,
                "reason": reason,
                "time": time.time(),
            }
        )
        log.warning("node %s declined run %s: %s", node_id, d.run_id, reason)

    # ------------------------------------------------------------------ gRPC (thin)

    def _peer(self, context: grpc.ServicerContext, method: str) -> str | None:
        return self.gate.identify(context, method) if self.gate is not None else None

    def _await_rpc(self, request: Any, context: grpc.ServicerContext) -> pb.RunOffer:
        with _status(context, "AwaitRun"):
            peer = self._peer(context, "AwaitRun")
            offer = self.await_run(_checked(request), peer, active=context.is_active)
            return serde_standing.run_offer_to_proto(offer)
        raise AssertionError("unreachable")

    def _decline_rpc(self, request: Any, context: grpc.ServicerContext) -> pb.Ack:
        with _status(context, "DeclineRun"):
            peer = self._peer(context, "DeclineRun")
            self.decline(_checked(request), peer)
            return pb.Ack()
        raise AssertionError("unreachable")

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "AwaitRun": grpc.unary_unary_rpc_method_handler(
                self._await_rpc,
                request_deserializer=_proto(
                    pb.AwaitRunRequest, serde_standing.await_run_from_proto
                ),
                response_serializer=_serialize,
            ),
            "DeclineRun": grpc.unary_unary_rpc_method_handler(
                self._decline_rpc,
                request_deserializer=_proto(
                    pb.DeclineRunRequest, serde_standing.run_decline_from_proto
                ),
                response_serializer=_serialize,
            ),
        }


def _claimed(name: str) -> str:
    """Without TLS, the node's claimed name is its id (checked like a certificate's)."""
    try:
        return check_node_id(name)
    except FedhiveError as exc:
        raise InvalidUpdateError(str(exc)) from exc
