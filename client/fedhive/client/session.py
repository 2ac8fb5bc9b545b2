"""A node's membership of its run: join (again), heartbeat, backoff, decline a round, leave.

Unreachable coordinator: exponential backoff with jitter. Coordinator restarted (node unknown):
join again. The heartbeat thread keeps the node alive in the coordinator's eyes while it trains;
the session owns it (:meth:`Session.start`, :meth:`Session.close`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable

from fedhive.client.backoff import Backoff
from fedhive.client.device import describe_device
from fedhive.client.transport import Transport
from fedhive.common.config import ClientConfig
from fedhive.common.errors import FedhiveError, TransportError, UnknownNodeError
from fedhive.common.wire.messages import JoinReply, JoinRequest

log = logging.getLogger("fedhive.client")

HEARTBEAT_JOIN_S = 5.0  # at most this long for the heartbeat thread's last call on close
MAX_REASON = 500  # characters of a decline's reason sent to the coordinator


class Session:
    """Joins (on first use and whenever :meth:`rejoin` asked for it), beats, paces retries."""

    def __init__(
        self,
        config: ClientConfig,
        transport: Transport,
        stop_event: threading.Event,
        request: Callable[[], JoinRequest],  # this node's join request, built at each join
        on_joined: Callable[[JoinReply], object],
    ) -> None:
        self.config = config
        self.transport = transport
        self.stop_event = stop_event
        self._request = request
        self._on_joined = on_joined
        self.joined: JoinReply | None = None
        self._rejoin = threading.Event()
        self._backoff = Backoff(config, stop_event)
        self._refusals = 0  # refusals since the last task done (paces the retries)
        self._beat = threading.Thread(
            target=self._heartbeat_loop, name="fedhive-heartbeat", daemon=True
        )

    # ------------------------------------------------------------------ pacing

    def backoff(self) -> None:
        self._backoff.wait()

    def reached(self) -> None:
        """The coordinator answered: the next backoff starts short again."""
        self._backoff.reset()

    def pause_after_refusal(self) -> None:
        """Refused (or refusing a broken download): wait before the next try, longer each time
        until a task succeeds, so a node never spins against a coordinator."""
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(self._refusals, 30)))
        self._refusals += 1
        self.stop_event.wait(delay * random.uniform(0.5, 1.0))

    def task_done(self) -> None:
        """A task succeeded: the next refusal pauses briefly again."""
        self._refusals = 0

    # ------------------------------------------------------------------ membership

    def rejoin(self) -> None:
        self._rejoin.set()

    def ensure_joined(self) -> JoinReply:
        while self.joined is None or self._rejoin.is_set():
            if self.stop_event.is_set():
                raise TransportError("stopping")
            try:
                request = self._request()
                self.joined = self.transport.join(request)
                self._rejoin.clear()
                self._backoff.reset()
                self._on_joined(self.joined)
                log.info(
                    "joined run %s as %s (device %s)",
                    self.joined.run_id,
                    self.joined.auth.node_id,
                    describe_device(request.device),
                )
            except TransportError as exc:
                log.warning("cannot reach the coordinator (%s); retrying", exc)
                self.backoff()
        return self.joined

    def decline(self, joined: JoinReply, round_: int, reason: str) -> None:
        """Tell the coordinator this node cannot do the round (best effort: if the call fails,
        the round still drops the node at its deadline or heartbeat timeout)."""
        try:
            self.transport.decline(joined.auth, round_, reason[:MAX_REASON])
            log.warning("round %d: declined (%s)", round_, reason)
        except FedhiveError as exc:
            log.warning("round %d: could not decline (%s)", round_, exc)

    def leave(self) -> None:
        if self.joined is None:
            return
        with contextlib.suppress(FedhiveError):
            self.transport.leave(self.joined.auth, "node stopping")

    # ------------------------------------------------------------------ heartbeat

    def start(self) -> None:
        self._beat.start()

    def close(self) -> None:
        """Stop the heartbeat (the stop event is set) and join its thread."""
        self.stop_event.set()
        if self._beat.is_alive():
            self._beat.join(HEARTBEAT_JOIN_S)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            interval = self.joined.heartbeat_interval_s if self.joined else 1.0
            if self.stop_event.wait(interval):
                return
            joined = self.joined  # read after the wait: never a token a join since replaced
            if joined is None or self._rejoin.is_set():
                continue
            try:
                self.transport.heartbeat(joined.auth)
            except UnknownNodeError as exc:
                if self.joined is joined:  # (a join in the meantime answered it already)
                    log.info("heartbeat: %s; joining again", exc)
                    self._rejoin.set()
            except FedhiveError as exc:
                log.debug("heartbeat failed: %s", exc)
