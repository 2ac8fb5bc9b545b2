"""The round engine's driver. Imports no grpc: the servicer (or a test) calls the node-facing
methods, which it inherits from :class:`~fedhive.server.node_api.NodeAPI`.

:meth:`Coordinator.run` loops over rounds:

    wait for ``min_nodes`` -> select a fraction -> open the round with its aggregation path
    (every selected node's pull now returns the task) -> collect until the path says collection
    is over (all selected nodes reported, were refused or dropped), or the deadline passes ->
    close -> if at least ``min_updates`` arrived and the path gave a finite model: commit the
    model and the round's record -> next round; else retry or stop, per config.

The driver composes its parts and never asks which aggregation path a round has: plain or
SecAgg+ is chosen once per round by :class:`~fedhive.server.paths.Paths`
(:mod:`fedhive.server.plain_path`, :mod:`fedhive.server.secure_path`); the close and the record
are :mod:`fedhive.server.round_close`'s; the model the nodes pull is
:mod:`fedhive.server.global_model`'s.

Invariant: an update touches the aggregate only after its whole stream was checked (every chunk
on arrival, length and digest at the end); a refused or broken update leaves no trace.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.errors import AggregationError, ConfigError, FedhiveError
from fedhive.common.record import KINDS, RoundRecord
from fedhive.common.wire.messages import TaskKind
from fedhive.common.wire.tensors import TensorSpec, payload_bytes, raw_view
from fedhive.server import waiting
from fedhive.server.aggregation import StrategyHost
from fedhive.server.global_model import GlobalModel
from fedhive.server.node_api import NodeAPI, RoundListener
from fedhive.server.paths import Paths
from fedhive.server.privacy.budget import RunPrivacy
from fedhive.server.privacy.sgd import task_config as sgd_task_config
from fedhive.server.registry import NodeRecord, NodeRegistry
from fedhive.server.round_close import STOPPING, Evaluator, RoundCloser, base_event, cut_off
from fedhive.server.rounds import RoundState, UpdateSession
from fedhive.server.secure import dp_inputs
from fedhive.server.spool import SpoolBudget
from fedhive.server.store import ResumePoint, RunStore
from fedhive.server.strategy import Aggregator

__all__ = [  # RoundListener and Evaluator: the types a caller passes in, importable from here
    "Coordinator",
    "Evaluator",
    "RoundListener",
    "RunAborted",
    "RunStopped",
]

log = logging.getLogger("fedhive.server")

DEFAULT_SPOOL_MEMORY = 256 << 20
RECORDS = KINDS  # the events a run's history (its summary) is made of


class RunAborted(FedhiveError):
    """The run stopped before its last round (not enough nodes or updates)."""


class RunStopped(RunAborted):
    """The coordinator was stopped on purpose (SIGTERM, Ctrl-C) before the run's end. The run
    is not over: nodes are not told to finish, they reconnect, and a restart resumes it."""


class BudgetSpent(RunAborted):
    """The next round would exceed the run's privacy budget ([dp] max_epsilon)."""


class Coordinator(NodeAPI):
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
        super().__init__()
        self.config = config
        self.specs = list(specs)
        self.store = store
        self.strategy = StrategyHost(aggregator, store.models_dir)
        self.aggregator: Aggregator = self.strategy.aggregator
        self.paths = Paths(config, self.specs, self.strategy)  # refuses what cannot compose
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
        resumed_from = store.model_path(resume.round) if resume is not None else None
        self.model = GlobalModel(config, self.specs, self.run_id, initial, resumed_from)
        # round 0 is written by run() on a new run; afterwards only the encoded chunks remain
        self._initial: list[np.ndarray] | None = initial if resume is None else None
        del initial
        past, elements = store.events() if resume else (), sum(s.numel for s in self.specs)
        self.privacy = RunPrivacy.for_run(config, self.aggregator, past, elements, store.events)
        self.closer = RoundCloser(
            config, self.specs, store, self.strategy, self.model, evaluator, self.privacy
        )
        self.registry = NodeRegistry(
            config, store, resume=resume, identity_verifier=identity_verifier
        )
        self.committed_rounds = resume.round if resume else 0
        if resume is not None:
            self.strategy.restore(resume.strategy_state)
        self.history: list[RoundRecord] = []  # this run's round records (all, once finished)
        self.stopped_by = ""  # an administrator's stop ("stopped by administrator NAME")

    def stop(self, why: str = "") -> None:
        """Stop the run at its next step; ``why`` (an administrator's stop) makes it final, else
        (SIGTERM) it resumes when the coordinator starts again."""
        if why and not self.stopped_by:
            self.stopped_by = why
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def global_model(self) -> list[np.ndarray]:
        """A copy of the current global model (raw bytes per tensor)."""
        return self.model.arrays()

    def _wait_for_nodes(self, count: int, what: str, retry: bool = False) -> None:
        """Until ``count`` nodes are connected, the join timeout or a stop; a ``retry`` ends at
        once when every node has left (a failed attempt's nodes that left are not waited for)."""
        started = time.monotonic()
        deadline = started + self.config.join_timeout_s
        say = waiting.WaitLog(started, waiting.WAIT_LOG_INTERVAL_S)
        with self._cv:
            while len(self.registry.alive()) < count:
                if self._stop.is_set():
                    raise RunStopped("stopped while waiting for nodes")
                if retry and (gone := self.registry.all_left()):
                    raise RunAborted(waiting.nobody_left(gone, what))
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

    def run(self) -> list[RoundRecord]:
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
            self.history = [
                RoundRecord.from_event(e) for e in self.store.events() if e["event"] in RECORDS
            ]
            return self.history
        base = {"run_id": self.run_id, "time": time.time(), "model_bytes": self.model_bytes}
        if self.resume is None:
            self.store.append_event({"event": "start", "tensors": len(self.specs), **base})
            if self._initial is not None:
                buffers = [raw_view(a) for a in self._initial]
                path = self.store.write_model(0, self.specs, buffers)
                self.store.commit_round(0, path, None, self.strategy.state(0), time.time())
                del buffers
                if self.model.source is None:
                    self.model.adopt(path, self._initial)
        self._initial = None
        if self.resume is not None:
            self.store.append_event({"event": "resumed", "round": self.resume.round, **base})
            log.info("resuming run %s after round %d", self.run_id, self.resume.round)
        number, attempt = self.committed_rounds + 1, 0
        try:
            while number <= cfg.rounds:
                self._check_stop()
                record = self._run_round(number, attempt, TaskKind.TRAIN)
                self._check_stop()
                if record.committed:
                    number, attempt = number + 1, 0
                    continue
                attempt += 1
                if cfg.on_failed_round == "stop" or attempt > cfg.max_round_retries:
                    raise RunAborted(f"round {number} failed: {record.reason}")
                log.warning(
                    "round %d failed (%s); retrying (%d/%d)",
                    number,
                    record.reason,
                    attempt,
                    cfg.max_round_retries,
                )
            if cfg.federated_evaluation:
                self._run_round(cfg.rounds, 0, TaskKind.EVALUATE)
                self._check_stop()
        except RunStopped as exc:  # not the run's end: nodes are not told to finish
            self._stopped(exc)
            raise
        except RunAborted as exc:  # a spent privacy budget ends the run: a restart has no more
            end = "finished" if isinstance(exc, BudgetSpent) else "aborted"
            log.log(logging.WARNING if end == "finished" else logging.ERROR, "run %s: %s", end, exc)
            self.store.append_event({"event": end, "reason": str(exc), "time": time.time()})
            self._finish()
            raise
        self._finish()
        self.store.append_event(
            {"event": "finished", "rounds": self.committed_rounds, "time": time.time()}
        )
        return self.history

    def _stopped(self, exc: RunStopped) -> None:
        done, total = self.committed_rounds, self.config.rounds
        event = {"event": "stopped", "round": done, "time": time.time()}
        if self.stopped_by:  # an administrator's: final
            log.warning(
                "run %s %s, after round %d of %d", self.run_id, self.stopped_by, *(done, total)
            )
            self.store.append_event({**event, "reason": self.stopped_by})
            return
        log.warning(
            "%s after round %d of %d: the run is not over; nodes keep reconnecting. Start the "
            "coordinator again on %s to resume",
            *(exc, done, total, self.config.run_dir),
        )
        self.store.append_event(event)

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
            self._wait_for_nodes(cfg.min_nodes, f"start round {number}", retry=attempt > 0)
        else:
            self._wait_for_nodes(1, "evaluate the final model")
        train_config: dict[str, Any] = {**cfg.train, "round": number}
        if kind == TaskKind.TRAIN:
            train_config["evaluate"] = cfg.federated_evaluation
            try:
                train_config = self.strategy.configure(number, train_config)
            except AggregationError as exc:
                raise RunAborted(f"round {number}: {exc}") from exc
            train_config.update(sgd_task_config(cfg.dp, cfg.rounds))  # after the strategy's
        with self._cv:
            alive = self.paths.eligible(kind, self.registry.alive())
            selected = (
                self._select(number, attempt, alive)
                if kind == TaskKind.TRAIN
                else {n.node_id for n in alive}
            )
            chosen = [self.registry[u] for u in selected]
        budget = self.privacy.before_round  # checked before the round opens
        if kind == TaskKind.TRAIN and (why := budget(number, len(selected), len(alive))):
            raise BudgetSpent(why)
        deadline = time.monotonic() + cfg.round_timeout_s
        dp = None
        if kind == TaskKind.TRAIN:  # distributed DP: the round's base model and the accountant
            dp = dp_inputs(cfg, self.store, self.committed_rounds, len(alive))
        try:
            path = self.paths.open(
                kind,
                number,
                attempt,
                chosen,
                deadline,
                self.store.model_path(self.committed_rounds),
                dp,
            )
        except ConfigError as exc:
            raise RunAborted(f"round {number}: {exc}") from exc
        broadcast = self.model.broadcast(number, kind, {**train_config, **path.task_config})
        with self._cv:
            now = time.monotonic()
            st = RoundState(number, attempt, kind, selected, deadline, now, broadcast, path)
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
        reason, unfinished = self._collect(st)
        with self._cv:
            base = base_event(st, time.monotonic() - st.opened_at)
        try:
            if kind == TaskKind.EVALUATE:
                record = self.closer.evaluation(st, base, self.committed_rounds)
            else:
                record = self.closer.training(st, base, reason)
        finally:  # after the round's record: their refusals cannot change it any more
            cut_off(st.number, unfinished)
        if record.committed and kind == TaskKind.TRAIN:
            self.committed_rounds = st.number
        self.history.append(record)
        if self.listener is not None:
            self.listener.round_closed(record)
        return record

    def _collect(self, st: RoundState) -> tuple[str, list[UpdateSession]]:
        """Wait until round ``st``'s path says collection is over, its deadline passes or the
        coordinator stops; then close it. Returns why it closed early ("" if it did not) and the
        uploads still open (to be cut off once its record is written)."""
        reason = ""
        path = st.path
        with self._cv:
            while True:
                now = time.monotonic()
                watched = path.watched(st)
                for nid in self.registry.silent([n for n in watched if n not in st.uploads], now):
                    st.dropped.add(nid)
                    log.warning("round %d: node %s dropped (no heartbeat)", st.number, nid)
                if path.collected(st):
                    break
                if now >= st.deadline and path.deadline_applies():
                    reason = f"deadline of {self.config.round_timeout_s:g}s passed"
                    break
                if self._stop.is_set():
                    reason = STOPPING
                    break
                self._cv.wait(min(0.25, st.deadline - now) if now < st.deadline else 0.25)
            st.closed = True
            self._cv.notify_all()
            while st.folding:
                self._cv.wait(0.1)
            return reason, list(st.uploads.values())
