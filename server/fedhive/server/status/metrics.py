"""Prometheus metrics, collected through the round engine's listener seam and the node registry.

:class:`FederationMetrics` is a :class:`~fedhive.server.coordinator.RoundListener`: it counts what
the engine reports (rounds opened and closed, updates, bytes, refusals) and never reaches into the
engine. Each instance has its own registry, so several coordinators in one process (tests, a
service) never share counters. Refusal reasons are free text on the wire side; here they are
folded into a small fixed set of labels (:data:`REFUSAL_REASONS`), so a hostile node cannot grow
the label set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# (label, substrings of the reason that select it), tried in order; "other" when none matches
_REASON_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("declined", ("declined",)),
    ("stopping", ("coordinator is stopping",)),
    ("late", ("is late", "stale", "round closed")),
    ("digest", ("digest",)),
    ("non_finite", ("non-finite", "not finite", "nan or inf")),
    ("limit", ("exceeds", "limit", "too large", "too many")),
    ("timeout", ("timeout", "timed out", "idle", "cut off", "deadline")),
    ("shape", ("tensor", "shape", "dtype", "bytes, expected")),
    ("malformed", ("malformed", "truncated", "empty chunk", "without a body", "example count")),
)
REFUSAL_REASONS = (*(label for label, _ in _REASON_RULES), "other")
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def refusal_label(reason: str) -> str:
    """The fixed label a refusal's free-text reason is counted under."""
    text = reason.lower()
    for label, needles in _REASON_RULES:
        if any(n in text for n in needles):
            return label
    return "other"


@dataclass(frozen=True)
class LiveRound:
    """The round under way, as the listener last heard of it."""

    round: int
    kind: str
    selected: int
    received: int
    bytes_in: int
    opened_at: float  # time.time()


class FederationMetrics:
    """Counters and gauges of one coordinator process (a RoundListener)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_committed = Counter(
            "fedhive_rounds_committed", "Training rounds committed", registry=r
        )
        self.rounds_failed = Counter(
            "fedhive_rounds_failed", "Training rounds closed without a commit", registry=r
        )
        self.round_duration = Histogram(
            "fedhive_round_duration_seconds",
            "Duration of closed rounds (training and evaluation)",
            ["kind"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.bytes_in = Counter(
            "fedhive_bytes_received", "Update bytes received by closed rounds", registry=r
        )
        self.bytes_out = Counter(
            "fedhive_bytes_sent", "Model bytes sent by closed rounds", registry=r
        )
        self.updates = Counter(
            "fedhive_updates_received", "Updates verified and folded", registry=r
        )
        self.refused = Counter(
            "fedhive_updates_refused",
            "Updates (or nodes) refused in closed rounds, by reason",
            ["reason"],
            registry=r,
        )
        self.connected = Gauge(
            "fedhive_connected_nodes", "Nodes connected and alive now", registry=r
        )
        self.queue_length = Gauge(
            "fedhive_queue_length",
            "Runs submitted and not finished (running or waiting)",
            registry=r,
        )
        self.current_round = Gauge(
            "fedhive_current_round", "The round under way (0: none yet)", registry=r
        )
        self.last_committed = Gauge(
            "fedhive_last_committed_round", "The last training round committed", registry=r
        )
        for label in REFUSAL_REASONS:  # every label present from the start (at 0)
            self.refused.labels(reason=label)
        for kind in ("train", "evaluate"):
            self.round_duration.labels(kind=kind)
        self._lock = threading.Lock()
        self._live: LiveRound | None = None
        self._queued = 0

    def watch_nodes(self, count: Callable[[], int]) -> None:
        """Read the connected-node gauge from ``count`` at every scrape (the live registry)."""
        self.connected.set_function(lambda: float(count()))

    def set_queue_length(self, runs: int) -> None:
        """Runs submitted and not finished (a one-shot server: 1 while its run runs)."""
        with self._lock:
            self._queued = max(0, int(runs))
        self.queue_length.set(self._queued)

    @property
    def queued(self) -> int:
        with self._lock:
            return self._queued

    def live_round(self) -> LiveRound | None:
        with self._lock:
            return self._live

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    # -- RoundListener
    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        with self._lock:
            self._live = LiveRound(round_, kind, len(selected), 0, 0, time.time())
        self.current_round.set(round_)

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        self.updates.inc()
        with self._lock:
            live = self._live
            if live is not None and live.round == round_:  # concurrent uploads: never go back
                self._live = LiveRound(
                    round_,
                    live.kind,
                    live.selected,
                    max(live.received, received),
                    max(live.bytes_in, bytes_in),
                    live.opened_at,
                )

    def round_closed(self, event: Mapping[str, Any]) -> None:
        kind = "evaluate" if event.get("event") == "evaluate" else "train"
        with self._lock:
            self._live = None
        self.round_duration.labels(kind=kind).observe(float(event.get("duration_s", 0.0)))
        self.bytes_in.inc(max(0, int(event.get("bytes_in", 0))))
        self.bytes_out.inc(max(0, int(event.get("bytes_out", 0))))
        for reason in (event.get("refused") or {}).values():
            self.refused.labels(reason=refusal_label(str(reason))).inc()
        if kind == "train":
            if event.get("committed"):
                self.rounds_committed.inc()
                self.last_committed.set(int(event.get("round", 0)))
            else:
                self.rounds_failed.inc()


class Listeners:
    """Several RoundListeners as one (the engine takes one): each call goes to each, in order."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners = [item for item in listeners if item is not None]

    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        for item in self.listeners:
            item.round_opened(round_, kind, selected)

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        for item in self.listeners:
            item.update_received(round_, received, expected, bytes_in)

    def round_closed(self, event: Any) -> None:
        for item in self.listeners:
            item.round_closed(event)
