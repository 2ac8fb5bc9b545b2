"""The round engine. Imports no grpc: the servicer (or a test) calls the node-facing methods.

Node-facing, thread-safe: :meth:`Coordinator.join`, :meth:`pull`, :meth:`open_update` (returns an
:class:`~fedhive.server.rounds.UpdateSession` that takes checked chunks and a trailer),
:meth:`report_evaluation`, :meth:`heartbeat`, :meth:`leave`. The driver, :meth:`Coordinator.run`,
loops over rounds:

    wait for ``min_nodes`` -> select a fraction -> open the round (every selected node's pull now
    returns the task) -> collect until all selected nodes reported, were refused or dropped, or the
    deadline passes -> close -> if at least ``min_updates`` arrived: finalize the strategy, commit
    the model and the round's record -> next round; else retry or stop, per config.

Invariant: an update touches the aggregate only after its whole stream was checked (every chunk
on arrival, length and digest at the end); a refused or broken update leaves no trace.

Identity: under mutual TLS the servicer passes each call's verified certificate name as
``peer_id``. A node joined with a ``peer_id`` *is* that id, and every later call must come from the
same identity as well as carry the node's token (a token is useless with another certificate).
The node registry (:mod:`fedhive.server.registry`) checks both; the engine calls it under its lock.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedhive.common import serde
from fedhive.common.config import ServerConfig
from fedhive.common.errors import (
    AggregationError,
    ConfigError,
    CoordinatorStopping,
    DuplicateUpdateError,
    FedhiveError,
    NotSelectedError,
    RequestRefused,
    StaleRoundError,
)
from fedhive.common.messages import (
    EvaluationReport,
    JoinReply,
    JoinRequest,
    NodeAuth,
    TaskHeader,
    TaskKind,
    TaskTrailer,
    UpdateHeader,
    UpdateTrailer,
)
from fedhive.common.record import EVALUATE, KINDS, ROUND, RoundRecord
from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.tensors import TensorSpec, check_finite, payload_bytes, raw_view
from fedhive.server import waiting
from fedhive.server.aggregation import StrategyHost, weighted_mean
from fedhive.server.broadcast import (
    DEFAULT_BROADCAST_MEMORY,
    EMPTY_BROADCAST,
    Broadcast,
    EncodedModel,
    FileModel,
    ModelSource,
)
from fedhive.server.limits import check_examples, wire_wait
from fedhive.server.privacy.sgd import round_privacy
from fedhive.server.privacy.sgd import task_config as sgd_task_config
from fedhive.server.registry import NodeRecord, NodeRegistry
from fedhive.server.rounds import (
    Contribution,
    RoundState,
    UpdateSession,
    check_header,
    check_open,
)
from fedhive.server.secure import SecureRound, finalize_secure, open_secure_round, watch_secure
from fedhive.server.spool import SpoolBudget
from fedhive.server.store import ResumePoint, RunStore
from fedhive.server.strategy import Aggregator

log = logging.getLogger("fedhive.server")

MAX_PULL_WAIT_S = 60.0
PULL_CHECK_S = 0.5  # a waiting pull checks this often whether its caller is still there
DEFAULT_SPOOL_MEMORY = 256 << 20
RECORDS = KINDS  # the events a run's history (its summary) is made of


class RunAborted(FedhiveError):
    """The run stopped before its last round (not enough nodes or updates)."""


class RunStopped(RunAborted):
    """The coordinator was stopped on purpose (SIGTERM, Ctrl-C) before the run's end. The run
    is not over: nodes are not told to finish, they reconnect, and a restart resumes it."""


STOPPING = "the coordinator is stopping"


class RoundListener(Protocol):
    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None: ...
    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None: ...
    def round_closed(self, event: RoundRecord) -> None: ...


Evaluator = Callable[[int, Sequence[TensorSpec], Sequence[np.ndarray]], Mapping[str, float] | None]


class Coordinator:
    def __init__(
        self,
        config: ServerConfig,
        specs: Sequence[TensorSpec],
        initial: Sequence[np.ndarray],
        store: RunStore,
        *,
        aggregator: Aggregator | None = None,
        evaluator: Evaluator | None = None,
        listener: RoundListener | None = None,
        run_id: str | None = None,
        resume: ResumePoint | None = None,
        identity_verifier: Callable[[bytes, str], bytes] | None = None,
    ) -> None:
        if config.secure_aggregation != "none" and getattr(aggregator, "needs_updates", False):
            raise ConfigError(
                f"secure_aggregation = {config.secure_aggregation!r} yields only the sum of "
                "updates the coordinator never sees; the strategy "
                f"{type(aggregator).__name__} must see each update"
            )
        self.config = config
        self.specs = list(specs)
        self.store = store
        self.strategy = StrategyHost(aggregator, store.models_dir)
        self.aggregator: Aggregator = self.strategy.aggregator
        self.evaluator = evaluator
        self.listener = listener
        self.resume = resume
        self.run_id = resume.run_id if resume else (run_id or secrets.token_hex(8))
        self.model_bytes = payload_bytes(self.specs)
        budget = config.spool_memory_bytes
        if budget is None:  # default: two updates in memory, at most 256 MiB; the rest in files
            budget = min(2 * self.model_bytes, DEFAULT_SPOOL_MEMORY)
        self.spool_budget = SpoolBudget(budget)
        initial = [np.ascontiguousarray(a).reshape(-1) for a in initial]
        self._check_initial(initial)
        # round 0 is written by run() on a new run; afterwards only the encoded chunks remain
        self._initial: list[np.ndarray] | None = initial if resume is None else None
        limit = config.broadcast_memory_bytes
        self._model_in_memory = self.model_bytes <= (
            DEFAULT_BROADCAST_MEMORY if limit is None else limit
        )
        self._model: ModelSource | None = None
        if self._model_in_memory:
            self._model = EncodedModel.of(self.specs, initial, config.chunk_size)
        elif resume is not None:  # served from the checkpoint it was resumed from
            self._model = FileModel.load(
                store.model_path(resume.round), self.specs, config.chunk_size
            )
        del initial
        self._cv = threading.Condition()
        self._fold_lock = threading.Lock()
        self.registry = NodeRegistry(
            config, store, resume=resume, identity_verifier=identity_verifier
        )
        self._round: RoundState | None = None
        self._broadcast: Broadcast | None = None
        self._broadcast_kind: tuple[int, TaskKind] | None = None
        self._finished = False
        self._stop = threading.Event()
        self.committed_rounds = resume.round if resume else 0
        if resume is not None:
            self.strategy.restore(resume.strategy_state)
        self.history: list[Mapping[str, Any]] = []  # RoundRecords (stored events if finished)

    def _check_initial(self, initial: Sequence[np.ndarray]) -> None:
        if len(initial) != len(self.specs):
            raise ValueError("initial model and specs differ in length")
        for spec, arr in zip(self.specs, initial, strict=True):
            if arr.nbytes != spec.nbytes:
                raise ValueError(
                    f"initial tensor {spec.name!r} has {arr.nbytes} bytes, not {spec.nbytes}"
                )

    # ------------------------------------------------------------------ node-facing API

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
            if st is not None and (
                node.node_id in st.pending()
                or (st.secure is not None and node.node_id in st.selected)
            ):
                st.dropped.add(node.node_id)  # a secure round needs every step's participants
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
                    return [self._header_bytes(TaskKind.FINISH, self.committed_rounds)]
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
                    return [self._header_bytes(TaskKind.WAIT, number, retry_after_s=0.0)]
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
            if st.secure is not None:  # serialised by the SecAgg round itself
                st.secure.fold(nid, session.pieces(0))
            else:
                with self._fold_lock:
                    self.aggregator.fold(session)
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

    # ------------------------------------------------------------------ driver

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def _header_bytes(self, kind: TaskKind, number: int, **extra: Any) -> bytes:
        return serde.task_message_to_bytes(TaskHeader(self.run_id, number, kind, **extra))

    def _model_source(self, path: Path, arrays: Sequence[np.ndarray]) -> ModelSource:
        """The new global model as the nodes will pull it (``path``: its checkpoint)."""
        if self._model_in_memory:
            return EncodedModel.of(self.specs, arrays, self.config.chunk_size)
        return FileModel.of(path, self.specs, arrays, self.config.chunk_size)

    def global_model(self) -> list[np.ndarray]:
        """A copy of the current global model (raw bytes per tensor)."""
        assert self._model is not None
        return self._model.arrays()

    def _encode(self, number: int, kind: TaskKind, config: Mapping[str, Any]) -> Broadcast:
        assert self._model is not None
        header = TaskHeader(
            run_id=self.run_id,
            round=number,
            kind=kind,
            config=dict(config),
            tensors=tuple(self.specs),
            payload_bytes=self.model_bytes,
            chunk_size=self.config.chunk_size,
        )
        return Broadcast(
            serde.task_message_to_bytes(header),
            self._model,
            serde.task_message_to_bytes(TaskTrailer(self._model.digest)),
            self.model_bytes,
        )

    def _wait_for_nodes(self, count: int, what: str) -> None:
        started = time.monotonic()
        deadline = started + self.config.join_timeout_s
        say = waiting.WaitLog(started, waiting.WAIT_LOG_INTERVAL_S)
        with self._cv:
            while len(self.registry.alive()) < count:
                if self._stop.is_set():
                    raise RunStopped("stopped while waiting for nodes")
                if time.monotonic() >= deadline:
                    raise RunAborted(
                        f"only {len(self.registry.alive())} of the {count} nodes needed joined "
                        f"within {self.config.join_timeout_s:g}s"
                    )
                now = time.monotonic()
                if say.due(now):
                    known = self.registry.known()
                    timeout = self.config.join_timeout_s
                    log.info(waiting.waiting_message(count, known, now - started, timeout, what))
                self._cv.wait(0.5)

    def run(self) -> list[Mapping[str, Any]]:
        """Run every round, then the final federated evaluation; returns the round records."""
        cfg = self.config
        if self.resume is not None and self.resume.finished:
            log.info(
                "run %s already finished (round %d committed, results in %s): nothing to do",
                self.run_id,
                self.resume.round,
                cfg.run_dir,
            )
            self._finish(grace_s=0.0)  # a node that calls now is told the run is over
            self.history = [e for e in self.store.events() if e["event"] in RECORDS]
            return self.history
        base = {"run_id": self.run_id, "time": time.time(), "model_bytes": self.model_bytes}
        if self.resume is None:
            self.store.append_event({"event": "start", "tensors": len(self.specs), **base})
            if self._initial is not None:
                buffers = [raw_view(a) for a in self._initial]
                path = self.store.write_model(0, self.specs, buffers)
                self.store.commit_round(0, path, None, self.strategy.state(0), time.time())
                del buffers
                if self._model is None:
                    self._model = self._model_source(path, self._initial)
        self._initial = None
        if self.resume is not None:
            self.store.append_event({"event": "resumed", "round": self.resume.round, **base})
            log.info("resuming run %s after round %d", self.run_id, self.resume.round)
        number, attempt = self.committed_rounds + 1, 0
        try:
            while number <= cfg.rounds:
                self._check_stop()
                event = self._run_round(number, attempt, TaskKind.TRAIN)
                self._check_stop()
                if event["committed"]:
                    number, attempt = number + 1, 0
                    continue
                attempt += 1
                if cfg.on_failed_round == "stop" or attempt > cfg.max_round_retries:
                    raise RunAborted(f"round {number} failed: {event['reason']}")
                log.warning(
                    "round %d failed (%s); retrying (%d/%d)",
                    number,
                    event["reason"],
                    attempt,
                    cfg.max_round_retries,
                )
            if cfg.federated_evaluation:
                self._run_round(cfg.rounds, 0, TaskKind.EVALUATE)
                self._check_stop()
        except RunStopped as exc:  # not the run's end: nodes are not told to finish
            log.warning(
                "%s after round %d of %d: the run is not over; nodes keep reconnecting. Start "
                "the coordinator again on %s to resume",
                exc,
                self.committed_rounds,
                cfg.rounds,
                cfg.run_dir,
            )
            self.store.append_event(
                {"event": "stopped", "round": self.committed_rounds, "time": time.time()}
            )
            raise
        except RunAborted as exc:
            log.error("run aborted: %s", exc)
            self.store.append_event({"event": "aborted", "reason": str(exc), "time": time.time()})
            self._finish()
            raise
        self._finish()
        self.store.append_event(
            {"event": "finished", "rounds": self.committed_rounds, "time": time.time()}
        )
        return self.history

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise RunStopped("stopped")

    def _finish(self, grace_s: float = 5.0) -> None:
        deadline = time.monotonic() + grace_s
        with self._cv:
            self._finished = True
            self._round = None
            self._cv.notify_all()
            while time.monotonic() < deadline and self.registry.any_active():
                self._cv.wait(0.1)

    def _select(self, number: int, attempt: int, alive: list[NodeRecord]) -> set[str]:
        ids = [n.node_id for n in alive]
        k = min(len(ids), max(self.config.min_nodes, math.ceil(self.config.fraction * len(ids))))
        try:
            return self.strategy.select(number, attempt, ids, k, self.config.seed)
        except AggregationError as exc:
            raise RunAborted(f"round {number}: {exc}") from exc

    def _run_round(self, number: int, attempt: int, kind: TaskKind) -> RoundRecord:
        cfg = self.config
        if kind == TaskKind.TRAIN:
            self._wait_for_nodes(cfg.min_nodes, f"start round {number}")
        else:
            self._wait_for_nodes(1, "evaluate the final model")
        train_config: dict[str, Any] = {**cfg.train, "round": number}
        secure_mode = kind == TaskKind.TRAIN and cfg.secure_aggregation == "secagg+"
        if kind == TaskKind.TRAIN:
            train_config["evaluate"] = cfg.federated_evaluation
            try:
                train_config = self.strategy.configure(number, train_config)
            except AggregationError as exc:
                raise RunAborted(f"round {number}: {exc}") from exc
            train_config.update(sgd_task_config(cfg.dp, cfg.rounds))  # after the strategy's
            if not secure_mode:  # a secure round sums masked words itself
                self.strategy.begin(self.specs, self.store.model_path(self.committed_rounds))
        with self._cv:
            alive = self.registry.alive()
            if secure_mode:  # only nodes that sent an identity key can take part
                alive = [n for n in alive if n.identity_key]
            selected = (
                self._select(number, attempt, alive)
                if kind == TaskKind.TRAIN
                else {n.node_id for n in alive}
            )
            chosen = [self.registry[u] for u in selected]
            keys = {n.node_id: n.identity_key for n in chosen}
            certs = {n.node_id: n.identity_cert for n in chosen if n.identity_cert}
        secure: SecureRound | None = None
        deadline = time.monotonic() + cfg.round_timeout_s
        if secure_mode:  # parameters differ per attempt: encode the broadcast each time
            try:
                secure = open_secure_round(
                    cfg, self.specs, number, attempt, keys, certs, masked_deadline=deadline
                )
            except ConfigError as exc:
                raise RunAborted(f"round {number}: secure aggregation cannot run: {exc}") from exc
            self._broadcast = None
            broadcast = self._encode(number, kind, {**train_config, **secure.task_config})
        else:
            broadcast = self._broadcast_for(number, kind, train_config)
        with self._cv:
            now = time.monotonic()
            st = RoundState(number, attempt, kind, selected, deadline, now, broadcast)
            st.secure = secure
            self._round = st
            self._cv.notify_all()
        log.info(
            "round %d%s: %s sent to %d node(s)",
            number,
            f" (attempt {attempt + 1})" if attempt else "",
            kind.name.lower(),
            len(selected),
        )
        if self.listener is not None:
            self.listener.round_opened(number, kind.name.lower(), sorted(selected))
        reason = ""
        with self._cv:
            while True:
                now = time.monotonic()
                watched = st.pending() if secure is None else st.selected - st.dropped
                for nid in self.registry.silent([n for n in watched if n not in st.uploads], now):
                    st.dropped.add(nid)
                    log.warning("round %d: node %s dropped (no heartbeat)", number, nid)
                if secure is not None:
                    if watch_secure(st, secure):
                        break
                elif not st.pending() and not st.uploads and st.folding == 0:
                    break
                # a secure round's masked step closes at the deadline; the unmask step after
                # it has its own (secagg_step_timeout_s)
                if now >= st.deadline and (secure is None or secure.rnd.step != "unmask"):
                    reason = f"deadline of {cfg.round_timeout_s:g}s passed"
                    break
                if self._stop.is_set():
                    reason = STOPPING
                    break
                self._cv.wait(min(0.25, st.deadline - now) if now < st.deadline else 0.25)
            st.closed = True
            self._cv.notify_all()
            while st.folding:
                self._cv.wait(0.1)
            unfinished = list(st.uploads.values())
        duration = time.monotonic() - st.opened_at
        try:
            if kind == TaskKind.EVALUATE:
                return self._close_evaluation(st, duration)
            return self._close_training(st, duration, reason)
        finally:  # after the round's record: their refusals cannot change it any more
            self._cut_off(st.number, unfinished)

    @staticmethod
    def _cut_off(number: int, unfinished: list[UpdateSession]) -> None:
        """Cancel uploads still open when their round closed (a stalled stream would otherwise
        keep its handler thread and staging buffer until the node hangs up)."""
        for session in unfinished:
            if session.cancel is not None and not session.done:
                log.warning(
                    "round %d: cancelling the unfinished upload from %s",
                    number,
                    session.node_id,
                )
                session.cancel()

    def _broadcast_for(self, number: int, kind: TaskKind, config: dict[str, Any]) -> Broadcast:
        broadcast = self._broadcast
        if broadcast is None or self._broadcast_kind != (number, kind):
            self._broadcast = None
            broadcast = self._encode(number, kind, config)
            self._broadcast = broadcast
            self._broadcast_kind = (number, kind)
        return broadcast

    def secagg_step(self, request: SecAggRequest, peer_id: str | None = None) -> SecAggReply:
        """One step of the open secure round for the calling node (waits up to its wait_s)."""
        with self._cv:
            node = self._auth(request.auth, peer_id)
            st = self._round
            if st is None or st.secure is None or st.closed:
                raise StaleRoundError(f"secagg step from {node.node_id}: no secure round is open")
            if node.node_id not in st.selected:
                raise NotSelectedError(f"node {node.node_id} is not selected for round {st.number}")
            secure = st.secure
        try:
            return secure.step(node.node_id, request)
        finally:
            if secure.rnd.finished:  # wake the round engine now, not at its next poll
                with self._cv:
                    self._cv.notify_all()

    def _base_event(self, st: RoundState, duration: float) -> dict[str, Any]:
        with self._cv:  # a late refusal or pull may still touch the closed round's state
            return {
                "round": st.number,
                "attempt": st.attempt,
                "selected": sorted(st.selected),
                "refused": dict(sorted(st.refused.items())),
                "dropped": sorted(st.dropped),
                "duration_s": round(duration, 6),
                "bytes_in": st.bytes_in,
                "bytes_out": st.bytes_out,
                "time": time.time(),
            }

    def _close_training(self, st: RoundState, duration: float, reason: str) -> RoundRecord:
        cfg = self.config
        event = {"event": ROUND, **self._base_event(st, duration)}
        contributions = list(st.reported.values())
        event["reported"] = sorted(st.reported)
        event["examples"] = sum(c.num_examples for c in contributions)
        needed = cfg.min_updates or 1
        new_global: Sequence[np.ndarray] = []
        failure = ""
        if st.secure is not None:  # abandoned (and why), or unmasked and dequantized
            started = time.monotonic()
            new_global, failure = finalize_secure(st.secure, reason)
            if not failure:  # the sum-only rules take the mean from here
                new_global, failure = self.strategy.from_mean(
                    self.specs, list(new_global), self.store.model_path(self.committed_rounds)
                )
            event["aggregate_s"] = round(time.monotonic() - started, 6)
            event["examples"] = st.secure.examples
        if reason == STOPPING:  # a partial round is not committed: it runs again on resume
            failure = f"{STOPPING}; the round runs again when the coordinator resumes"
        if not failure and len(contributions) < needed:
            failure = f"{len(contributions)} update(s) accepted, {needed} needed" + (
                f" ({reason})" if reason else ""
            )
        if not failure and st.secure is None:
            started = time.monotonic()
            new_global, failure = self.strategy.finalize()
            event["aggregate_s"] = round(time.monotonic() - started, 6)
        elif st.secure is None:
            self.strategy.abandon()
        if not failure:
            failure = _non_finite(self.specs, new_global)
        if failure:
            event["committed"] = False
            event["reason"] = failure
            log.warning("round %d not committed: %s", st.number, event["reason"])
            event["duration_s"] = round(time.monotonic() - st.opened_at, 6)
            record = RoundRecord(**event)
            self.store.append_event(record)
        else:
            new_flat = [np.ascontiguousarray(a).reshape(-1) for a in new_global]
            model_path = self.store.write_model(
                st.number, self.specs, [raw_view(a) for a in new_flat]
            )
            event["committed"] = True
            event["train"] = self.strategy.aggregate_metrics(
                [(c.num_examples, c.metrics) for c in contributions]
            )
            evals = [(c.eval_examples, c.eval_metrics) for c in contributions if c.eval_examples]
            if evals:
                event["evaluate"] = {
                    "model_round": st.number - 1,
                    "examples": sum(n for n, _ in evals),
                    **weighted_mean(evals),
                }
            event["nodes"] = {
                c.node_id: {
                    "examples": c.num_examples,
                    "train": dict(c.metrics),
                    "evaluate": dict(c.eval_metrics),
                }
                for c in sorted(contributions, key=lambda c: c.node_id)
            }
            if st.secure is None:  # the weights FedAvg used (each node's claim, bounded at join)
                for c in contributions:
                    event["nodes"][c.node_id]["weight"] = c.num_examples / event["examples"]
            if self.evaluator is not None:
                metrics = self.evaluator(st.number, self.specs, new_flat)
                if metrics is not None:
                    event["server_evaluate"] = dict(metrics)
            if reason:
                event["note"] = reason
            event["privacy"] = round_privacy(cfg.dp, contributions) or None
            event["duration_s"] = round(time.monotonic() - st.opened_at, 6)
            record = RoundRecord(**event)
            self.store.commit_round(
                st.number, model_path, record, self.strategy.state(st.number), time.time()
            )
            # free the old model's chunks before encoding the new one (2x the model at most)
            self._broadcast, st.broadcast, self._model = None, EMPTY_BROADCAST, None
            self._model = self._model_source(model_path, new_flat)
            del new_flat, new_global
            self.committed_rounds = st.number
        self.history.append(record)
        if self.listener is not None:
            self.listener.round_closed(record)
        return record

    def _close_evaluation(self, st: RoundState, duration: float) -> RoundRecord:
        event = {"event": EVALUATE, **self._base_event(st, duration)}
        items = list(st.evaluations.values())
        event["reported"] = sorted(st.evaluations)
        event["committed"] = True
        event["model_round"] = self.committed_rounds
        event["examples"] = sum(n for n, _ in items)
        event["evaluate"] = weighted_mean(items)
        event["nodes"] = {
            nid: {"examples": n, "evaluate": dict(m)}
            for nid, (n, m) in sorted(st.evaluations.items())
        }
        record = RoundRecord(**event)
        self.store.append_event(record)
        self.history.append(record)
        if self.listener is not None:
            self.listener.round_closed(record)
        return record


def _non_finite(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> str:
    """Why the new global model must not be committed ("" when every value is finite)."""
    for spec, arr in zip(specs, arrays, strict=True):
        if not check_finite(raw_view(arr), spec.dtype):
            return f"the aggregate holds non-finite values in tensor {spec.name!r}"
    return ""
