"""Closing a round: its aggregate committed (or not), its record written. No grpc.

:class:`RoundCloser` takes a collected round from the engine and

- asks the round's aggregation path for the new model, telling it whether the round may commit
  at all (the coordinator is stopping; too few updates arrived),
- refuses a non-finite aggregate whatever the strategy computed,
- on success writes the model, commits it with the round's :class:`RoundRecord` and the
  strategy's state (one atomic step in the run store), and serves the new model,
- else appends the record saying why, leaving the model and the strategy's committed state as
  they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.record import EVALUATE, ROUND, RoundRecord
from fedhive.common.wire.tensors import TensorSpec, check_finite, raw_view
from fedhive.server.aggregation import StrategyHost, weighted_mean
from fedhive.server.broadcast import EMPTY_BROADCAST
from fedhive.server.global_model import GlobalModel
from fedhive.server.privacy.budget import RunPrivacy
from fedhive.server.privacy.sgd import round_privacy
from fedhive.server.rounds import RoundState, UpdateSession
from fedhive.server.store import RunStore

log = logging.getLogger("fedhive.server")

STOPPING = "the coordinator is stopping"

Evaluator = Callable[[int, Sequence[TensorSpec], Sequence[np.ndarray]], Mapping[str, float] | None]


def base_event(st: RoundState, duration: float) -> dict[str, Any]:
    """The fields every round record has (under the engine's lock: a late refusal or pull may
    still touch the closed round's state)."""
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


def non_finite(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> str:
    """Why the new global model must not be committed ("" when every value is finite)."""
    for spec, arr in zip(specs, arrays, strict=True):
        if not check_finite(raw_view(arr), spec.dtype):
            return f"the aggregate holds non-finite values in tensor {spec.name!r}"
    return ""


def cut_off(number: int, unfinished: Sequence[UpdateSession]) -> None:
    """Cancel uploads still open when their round closed (a stalled stream would otherwise
    keep its handler thread and staging buffer until the node hangs up)."""
    for session in unfinished:
        if session.cancel is not None and not session.done:
            log.warning(
                "round %d: cancelling the unfinished upload from %s", number, session.node_id
            )
            session.cancel()


class RoundCloser:
    def __init__(
        self,
        config: ServerConfig,
        specs: Sequence[TensorSpec],
        store: RunStore,
        strategy: StrategyHost,
        model: GlobalModel,
        evaluator: Evaluator | None,
        privacy: RunPrivacy,
    ) -> None:
        self.config = config
        self.specs = list(specs)
        self.store = store
        self.strategy = strategy
        self.model = model
        self.evaluator = evaluator
        self.privacy = privacy  # the run's accountant: each committed round's epsilon

    def training(self, st: RoundState, base: Mapping[str, Any], reason: str) -> RoundRecord:
        """Close training round ``st`` (``reason``: why collection ended early, or "")."""
        event: dict[str, Any] = {"event": ROUND, **base}
        contributions = list(st.reported.values())
        event["reported"] = sorted(st.reported)
        event["examples"] = sum(c.num_examples for c in contributions)
        needed = self.config.min_updates or 1
        stopping = ""
        if reason == STOPPING:  # a partial round is not committed: it runs again on resume
            stopping = f"{STOPPING}; the round runs again when the coordinator resumes"
        shortfall = ""
        if len(contributions) < needed:
            shortfall = f"{len(contributions)} update(s) accepted, {needed} needed" + (
                f" ({reason})" if reason else ""
            )
        outcome = st.path.close(reason, stopping, shortfall)
        if outcome.aggregate_s is not None:
            event["aggregate_s"] = outcome.aggregate_s
        if outcome.examples is not None:
            event["examples"] = outcome.examples
        if outcome.privacy is not None:
            event["privacy"] = outcome.privacy
        failure = outcome.failure or non_finite(self.specs, outcome.arrays)
        if failure:
            self.strategy.rollback()  # as the last committed round left it
            event["committed"] = False
            event["reason"] = failure
            log.warning("round %d not committed: %s", st.number, failure)
            event["duration_s"] = round(time.monotonic() - st.opened_at, 6)
            record = RoundRecord(**event)
            self.store.append_event(record)
            return record
        new_flat = [np.ascontiguousarray(a).reshape(-1) for a in outcome.arrays]
        outcome.arrays = []
        model_path = self.store.write_model(st.number, self.specs, [raw_view(a) for a in new_flat])
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
        nodes: dict[str, dict[str, Any]] = {
            c.node_id: {
                "examples": c.num_examples,
                "train": dict(c.metrics),
                "evaluate": dict(c.eval_metrics),
            }
            for c in sorted(contributions, key=lambda c: c.node_id)
        }
        if st.path.weighted:  # the weights the fold used (each node's claim, bounded at join)
            for c in contributions:
                nodes[c.node_id]["weight"] = c.num_examples / event["examples"]
        event["nodes"] = nodes
        if self.evaluator is not None:
            metrics = self.evaluator(st.number, self.specs, new_flat)
            if metrics is not None:
                event["server_evaluate"] = dict(metrics)
        if reason:
            event["note"] = reason
        sgd = round_privacy(self.config.dp, contributions)  # the sites' own DP-SGD epsilons
        if sgd:
            event["privacy"] = {**(event.get("privacy") or {}), **sgd}
        event["privacy"] = self.privacy.committed(event)
        event["duration_s"] = round(time.monotonic() - st.opened_at, 6)
        record = RoundRecord(**event)
        self.store.commit_round(
            st.number, model_path, record, self.strategy.state(st.number), time.time()
        )
        st.broadcast = EMPTY_BROADCAST  # the old model's chunks go before the new ones come
        self.model.adopt(model_path, new_flat)
        return record

    def evaluation(self, st: RoundState, base: Mapping[str, Any], model_round: int) -> RoundRecord:
        """Close the final federated evaluation of the model committed by ``model_round``."""
        event: dict[str, Any] = {"event": EVALUATE, **base}
        items = list(st.evaluations.values())
        event["reported"] = sorted(st.evaluations)
        event["committed"] = True
        event["model_round"] = model_round
        event["examples"] = sum(n for n, _ in items)
        event["evaluate"] = weighted_mean(items)
        event["nodes"] = {
            nid: {"examples": n, "evaluate": dict(m)}
            for nid, (n, m) in sorted(st.evaluations.items())
        }
        record = RoundRecord(**event)
        self.store.append_event(record)
        return record
