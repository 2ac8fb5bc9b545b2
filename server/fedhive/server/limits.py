"""Limits on what a caller can hold: wire durations, stream admission, stalled-stream watchdog.

Every number on the wire is a claim to bound, and every wait needs a limit:

- :func:`wire_wait` checks a caller's long-poll duration (NaN, inf and negative values are
  refused; a finite value is clamped to the server's maximum).
- :class:`Admission` counts the streams in flight (pulls, uploads, secure-aggregation steps):
  at most ``budget`` in all, so that ``max_workers - budget`` call slots always stay free for the
  short calls (join, heartbeat, leave ...), and at most :data:`STREAMS_PER_IDENTITY` of each kind
  per identity (the verified certificate name under mutual TLS; without TLS the node id a pull
  or secure step names, and none for an upload before its header), so that one member cannot
  take them all.
- :class:`Watchdog` cancels a stream that waits for its caller longer than it may: an upload that
  sends no header within ``header_timeout_s``, or no next message within
  ``upload_idle_timeout_s`` (time the coordinator spends on the stream itself does not count).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Protocol, TypeVar

from fedhive.common.errors import InvalidUpdateError, LimitExceededError

log = logging.getLogger("fedhive.server.limits")

# A node needs one stream of each kind at a time; the second is room for a reconnect that
# overlaps the old stream before the coordinator notices it is gone.
STREAMS_PER_IDENTITY = 2

T = TypeVar("T")


def wire_wait(value: float, what: str, maximum: float) -> float:
    """A long-poll duration from the wire: finite and >= 0 (refused otherwise), at most
    ``maximum`` (clamped: a node may ask for longer than this server holds a call)."""
    if not math.isfinite(value) or value < 0:
        raise InvalidUpdateError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return min(value, maximum)


def check_examples(count: int, cap: int, what: str) -> None:
    """An example count from the wire weighs metrics: at most ``cap`` (max_node_examples)."""
    if count > cap:
        raise InvalidUpdateError(
            f"{what} of {count} exceeds the {cap} examples a node may claim (max_node_examples)"
        )


class Admission:
    """Counts streams in flight; refuses one beyond the budget or its identity's share."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._open = 0
        self._by_identity: dict[tuple[str, str], int] = {}

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    @contextmanager
    def stream(self, kind: str, identity: str | None) -> Iterator[None]:
        """Hold one of the ``budget`` stream slots (and, with an identity, one of its own) for
        the duration of the block; raise LimitExceededError when none is free."""
        key = (identity, kind) if identity is not None else None
        with self._lock:
            if self._open >= self.budget:
                raise LimitExceededError(
                    f"{kind}: the coordinator serves its maximum of {self.budget} streams; "
                    "try again shortly"
                )
            if key is not None and self._by_identity.get(key, 0) >= STREAMS_PER_IDENTITY:
                raise LimitExceededError(
                    f"{kind}: {identity} already has {STREAMS_PER_IDENTITY} such calls open"
                )
            self._open += 1
            if key is not None:
                self._by_identity[key] = self._by_identity.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if key is not None:
                    left = self._by_identity[key] - 1
                    if left:
                        self._by_identity[key] = left
                    else:
                        del self._by_identity[key]


class Watchdog:
    """One thread that fires callbacks at their deadlines unless disarmed first.

    Owned by the server: :meth:`start` at start-up, :meth:`stop` (joins the thread) at shutdown."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fedhive-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def arm(self, after_s: float, fire: Callable[[], None]) -> int:
        with self._cv:
            token = next(self._ids)
            self._armed[token] = fire
            heapq.heappush(self._heap, (time.monotonic() + after_s, token))
            self._cv.notify_all()
            return token

    def disarm(self, token: int) -> None:
        with self._cv:
            self._armed.pop(token, None)

    def _loop(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cv:
                if self._stopping:
                    return
                now = time.monotonic()
                while self._heap and (
                    self._heap[0][0] <= now or self._heap[0][1] not in self._armed
                ):
                    _, token = heapq.heappop(self._heap)
                    fire = self._armed.pop(token, None)
                    if fire is not None:
                        due.append(fire)
                if not due:
                    self._cv.wait(self._heap[0][0] - now if self._heap else None)
                    continue
            for fire in due:
                try:
                    fire()
                except Exception:  # a callback's bug must not stop the watchdog
                    log.exception("watchdog callback failed")

    def watch(
        self,
        messages: Iterator[T],
        first_s: float,
        idle_s: float,
        cancel: Callable[[], None],
        expired: list[str],
    ) -> Iterator[T]:
        """``messages``, cancelled (``cancel()``, the reason appended to ``expired``) when the
        first takes longer than ``first_s`` or any later one longer than ``idle_s``."""
        limit, what = first_s, "no header"
        while True:

            def fire(limit: float = limit, what: str = what) -> None:
                expired.append(f"stalled: {what} within {limit:g}s")
                cancel()

            token = self.arm(limit, fire)
            try:
                msg = next(messages)
            except StopIteration:
                return
            finally:
                self.disarm(token)
            yield msg
            limit, what = idle_s, "next message"


class _Registered(Protocol):
    last_seen: float
    finished: bool


R = TypeVar("R", bound=_Registered)


def make_room(
    nodes: MutableMapping[str, R],
    cap: int,
    expiry_s: float,
    busy: Collection[str],
    joining: str | None = None,
) -> None:
    """Before a join: forget nodes gone for ``expiry_s`` (or that left), except ``busy`` ones
    (the open round still expects them); refuse the join when the registry stays full. ``joining``:
    an id already registered (a node joining again takes no new place)."""
    if joining is not None and joining in nodes:
        return
    now = time.monotonic()
    gone = [
        nid
        for nid, node in nodes.items()
        if nid not in busy and (node.finished or now - node.last_seen > expiry_s)
    ]
    for nid in gone:
        del nodes[nid]
    if gone:
        log.info("forgot %d node(s) gone for over %gs or left", len(gone), expiry_s)
    if len(nodes) >= cap:
        raise LimitExceededError(
            f"the coordinator already holds its maximum of {cap} nodes "
            "(max_registered_nodes); try again later"
        )
