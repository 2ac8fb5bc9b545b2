"""The round engine's node-facing half: what the servicer (or a test) calls. Imports no grpc.

Thread-safe: :meth:`NodeAPI.join`, :meth:`pull`, :meth:`open_update` (returns an
:class:`~fedhive.server.rounds.UpdateSession` that takes checked chunks and a trailer),
:meth:`report_evaluation`, :meth:`secagg_step`, :meth:`decline`, :meth:`heartbeat`,
:meth:`leave`. Each call works on the open round's :class:`~fedhive.server.rounds.RoundState`
under the engine's lock (``_cv``, notified on every change the driver waits for) and hands the
aggregation to the round's path (:mod:`fedhive.server.aggregation_path`) without asking which
one it is. The driver, :class:`~fedhive.server.coordinator.Coordinator`, is this class plus
:meth:`~fedhive.server.coordinator.Coordinator.run`.

Identity: under mutual TLS the servicer passes each call's verified certificate name as
``peer_id``. A node joined with a ``peer_id`` *is* that id, and every later call must come from the
same identity as well as carry the node's token (a token is useless with another certificate).
The node registry (:mod:`fedhive.server.registry`) checks both; the engine calls it under its lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from fedhive.common.config import ServerConfig
from fedhive.common.errors import (
    CoordinatorStopping,
    DuplicateUpdateError,
    NotSelectedError,
    RequestRefused,
    StaleRoundError,
)
from fedhive.common.record import RoundRecord
from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.wire.messages import (
    EvaluationReport,
    JoinReply,
    JoinRequest,
    NodeAuth,
    TaskKind,
    UpdateHeader,
    UpdateTrailer,
)
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.global_model import GlobalModel
from fedhive.server.limits import check_examples, wire_wait
from fedhive.server.registry import NodeRecord, NodeRegistry
from fedhive.server.round_close import STOPPING
from fedhive.server.rounds import (
    Contribution,
    RoundState,
    UpdateSession,
    check_header,
    check_open,
)
from fedhive.server.spool import SpoolBudget

log = logging.getLogger("fedhive.server")

MAX_PULL_WAIT_S = 60.0
PULL_CHECK_S = 0.5  # a waiting pull checks this often whether its caller is still there


class RoundListener(Protocol):
    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None: ...
    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None: ...
    def round_closed(self, event: RoundRecord) -> None: ...


class NodeAPI:
    """The node-facing calls over the engine's shared state (set up by the driver)."""

    config: ServerConfig
    specs: list[TensorSpec]
    run_id: str
    registry: NodeRegistry
    model: GlobalModel
    spool_budget: SpoolBudget
    listener: RoundListener | None
    committed_rounds: int

    def __init__(self) -> None:
        self._cv = threading.Condition()  # guards the round state below and the registry
        self._round: RoundState | None = None  # the open (or last) round
        self._finished = False  # the run is over: every pull answers FINISH
        self._stop = threading.Event()

    def join(self, req: JoinRequest, peer_id: str | None = None) -> JoinReply:
        """A node joins; with ``peer_id`` (its verified certificate name) that is its node id,
        and joining again under the same identity replaces the old session."""
        identity = self.registry.check_join(req, peer_id)
        with self._cv:
            st = self._round
            busy = st.pending() | set(st.uploads) if st is not None and not st.closed else ()
            auth, again = self.registry.register(req, peer_id, identity, busy)
            self._cv.notify_all()
        log.info(
            "node %s %s (device=%s, examples=%d%s)",
            auth.node_id,
            "joined again" if again else "joined",
            req.device,
            req.num_examples,
            ", identity from its certificate" if peer_id is not None else "",
        )
        return JoinReply(auth, self.run_id, self.config.heartbeat_interval_s)

    def nodes(self) -> dict[str, NodeRecord]:
        """A snapshot of the node registry, by node id."""
        with self._cv:
            return self.registry.snapshot()

    def _auth(self, auth: NodeAuth, peer_id: str | None = None) -> NodeRecord:
        return self.registry.auth(auth, peer_id)

    def evict_peer(self, peer_id: str, reason: object) -> None:
        """The gate refused this identity (e.g. its certificate was just revoked): it leaves the
        run now, and its pending round stops waiting for it."""
        with self._cv:
            if not self.registry.evict(peer_id):
                return
            if self._round is not None and peer_id in self._round.pending():
                self._round.dropped.add(peer_id)
            self._cv.notify_all()
        log.warning("node %s removed from the run: %s", peer_id, reason)

    def heartbeat(self, auth: NodeAuth, peer_id: str | None = None) -> tuple[int, float]:
        with self._cv:
            self._auth(auth, peer_id)
            rnd = self._round.number if self._round else 0
        return rnd, self.config.heartbeat_interval_s

    def leave(self, auth: NodeAuth, reason: str = "", peer_id: str | None = None) -> None:
        with self._cv:
            node = self._auth(auth, peer_id)
            self.registry.leave(node)
            st = self._round
            if st is not None and node.node_id in st.path.watched(st):
                st.dropped.add(node.node_id)  # a secure round: any selected node it still needs
            self._cv.notify_all()
        log.info("node %s left%s", node.node_id, f" ({reason})" if reason else "")

    def decline(
        self, auth: NodeAuth, round_: int, reason: str = "", peer_id: str | None = None
    ) -> None:
        """A selected node cannot do the training round it pulled: stop waiting for it (a secure
        round treats it as a dropout at whatever step it reached)."""
        reason = reason.strip()[:500] or "no reason given"
        with self._cv:
            node = self._auth(auth, peer_id)
            st = self._round
            if st is None or st.closed or st.kind != TaskKind.TRAIN or st.number != round_:
                raise StaleRoundError(
                    f"decline from {node.node_id} for round {round_}: no such round is open"
                )
            if node.node_id not in st.selected:
                raise NotSelectedError(f"node {node.node_id} was not selected for round {round_}")
            if node.node_id in st.reported:
                raise DuplicateUpdateError(
                    f"node {node.node_id} already reported its update for round {round_}"
                )
            st.refused[node.node_id] = f"declined: {reason}"
            self._cv.notify_all()
        log.warning("node %s declined round %d: %s", node.node_id, round_, reason)

    def pull(
        self,
        auth: NodeAuth,
        wait_s: float,
        peer_id: str | None = None,
        active: Callable[[], bool] | None = None,
    ) -> Iterable[bytes]:
        """The node's next task as encoded TaskMessages; long-polls up to ``wait_s`` seconds,
        or until ``active()`` turns false (the caller hung up)."""
        wait_s = wire_wait(wait_s, "PullTask wait_s", MAX_PULL_WAIT_S)
        deadline = time.monotonic() + wait_s
        with self._cv:
            node = self._auth(auth, peer_id)
            while True:
                if self._finished:
                    node.finished = True
                    self._cv.notify_all()
                    return [self.model.header_bytes(TaskKind.FINISH, self.committed_rounds)]
                st = self._round
                if (
                    st is not None
                    and not st.closed
                    and node.node_id in st.pending()
                    and node.node_id not in st.uploads
                ):
                    st.pulled.add(node.node_id)
                    st.bytes_out += st.broadcast.payload_bytes
                    return st.broadcast.messages()
                if self._stop.is_set():
                    raise CoordinatorStopping(
                        f"{STOPPING}; the run is not over: reconnect until it is back"
                    )
                remaining = deadline - time.monotonic()
                gone = active is not None and not active()
                if remaining <= 0 or gone:
                    number = st.number if st is not None else 0
                    return [self.model.header_bytes(TaskKind.WAIT, number, retry_after_s=0.0)]
                self._cv.wait(min(remaining, PULL_CHECK_S))
                node.last_seen = time.monotonic()

    def open_update(
        self,
        header: UpdateHeader,
        peer_id: str | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> UpdateSession:
        with self._cv:
            node = self._auth(header.auth, peer_id)
            nid = node.node_id
            st = check_open(self._round, nid, header.round)
            st.admit(nid)
            specs = st.upload_specs or self.specs
            try:
                check_header(header, nid, node.num_examples, specs, self.config.max_update_bytes)
                session = UpdateSession(
                    nid,
                    st,
                    header,
                    specs,
                    self.config,
                    self.spool_budget,
                    commit=self._commit,
                    refuse=self._refuse,
                    cancel=cancel,
                )
            except RequestRefused as exc:
                st.refused[nid] = str(exc)
                self._cv.notify_all()
                log.warning("refused update: %s", exc)
                raise
            st.uploads[nid] = session
            return session

    def _commit(self, session: UpdateSession, trailer: UpdateTrailer) -> Contribution:
        st = session.state
        nid = session.node_id
        with self._cv:
            try:
                st.start_fold(nid, current=self._round is st)
            except StaleRoundError:
                self._cv.notify_all()
                raise
        try:
            st.path.fold(session)
        except RequestRefused as exc:  # e.g. it would overflow the aggregate: nothing was folded
            refusal = type(exc)(f"update from {nid} for round {st.number}: {exc}")
            with self._cv:
                st.fold_failed(nid, str(refusal))
                self._cv.notify_all()
            log.warning("refused update: %s", refusal)
            raise refusal from exc
        except Exception:
            with self._cv:
                st.fold_failed(nid, "aggregation failed")
                self._cv.notify_all()
            raise
        contribution = session.contribution(trailer)
        with self._cv:
            received, expected, bytes_in = st.folded(contribution)
            self._cv.notify_all()
        if self.listener is not None:
            self.listener.update_received(st.number, received, expected, bytes_in)
        return contribution

    def _refuse(self, session: UpdateSession, reason: str) -> None:
        st = session.state
        nid = session.node_id
        with self._cv:
            st.drop_upload(session, reason)
            self._cv.notify_all()
        log.warning("refused update from %s for round %d: %s", nid, st.number, reason)

    def report_evaluation(self, report: EvaluationReport, peer_id: str | None = None) -> None:
        check_examples(report.num_examples, self.config.max_node_examples, "num_examples")
        with self._cv:
            node = self._auth(report.auth, peer_id)
            st = self._round
            if st is None or st.kind != TaskKind.EVALUATE or st.number != report.round or st.closed:
                raise StaleRoundError(
                    f"evaluation from {node.node_id} for round {report.round}: "
                    "no such evaluation is open"
                )
            if node.node_id not in st.selected:
                raise NotSelectedError(f"node {node.node_id} was not asked to evaluate")
            if node.node_id in st.evaluations:
                raise DuplicateUpdateError(f"node {node.node_id} already reported its evaluation")
            st.evaluations[node.node_id] = (report.num_examples, dict(report.metrics))
            self._cv.notify_all()

    def secagg_step(self, request: SecAggRequest, peer_id: str | None = None) -> SecAggReply:
        """One step of the open secure round for the calling node (waits up to its wait_s)."""
        with self._cv:
            node = self._auth(request.auth, peer_id)
            st = self._round
            if st is None or st.closed:
                raise StaleRoundError(f"secagg step from {node.node_id}: no secure round is open")
            path = st.path
        try:
            return path.step(node.node_id, request)
        finally:  # wake the round engine now (the step may have closed), not at its next poll
            with self._cv:
                self._cv.notify_all()
