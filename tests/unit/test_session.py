"""A node's session against a coordinator that forgets it once (a restart): it joins again once,
and its heartbeat never sends a token from before that join (which would make it join again,
and again, each time the coordinator answered "unknown node")."""

from __future__ import annotations

import threading
import time

from fedhive.client.session import Session
from fedhive.common.config import ClientConfig
from fedhive.common.errors import UnknownNodeError
from fedhive.common.wire.messages import JoinReply, JoinRequest, NodeAuth

HEARTBEAT_S = 0.02
PULL_EVERY_S = 0.05  # the node's main loop: ensure_joined before each pull
WATCH_S = 1.5


class ForgetfulCoordinator:
    """Knows one token at a time; ``forget`` drops it (as a restarted coordinator does)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.joins = 0
        self.current: bytes | None = None
        self.stale_beats = 0

    def join(self, request: JoinRequest) -> JoinReply:
        with self.lock:
            self.joins += 1
            self.current = f"token-{self.joins}".encode()
            return JoinReply(NodeAuth("n0", self.current), "run", HEARTBEAT_S)

    def forget(self) -> None:
        with self.lock:
            self.current = None

    def heartbeat(self, auth: NodeAuth) -> None:
        with self.lock:
            if auth.token != self.current:
                self.stale_beats += 1
                raise UnknownNodeError("unknown node n0: join again")

    def leave(self, auth: NodeAuth, reason: str) -> None:
        pass


def test_one_forgotten_session_is_one_join_again_not_one_per_heartbeat() -> None:
    # Prepare: a joined session beating every 20 ms; the coordinator forgets it
    coordinator = ForgetfulCoordinator()
    stop = threading.Event()
    session = Session(
        ClientConfig(),
        coordinator,
        stop,
        lambda: JoinRequest("n0"),
        lambda _: None,  # type: ignore[arg-type]
    )
    session.ensure_joined()
    session.start()
    coordinator.forget()

    # Execute: the main loop pulls every 50 ms (joining again when asked to) for 1.5 s
    try:
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            session.ensure_joined()
            time.sleep(PULL_EVERY_S)
    finally:
        session.close()

    # Assert: one join, one join again; only the forgotten token was ever refused
    assert coordinator.joins == 2, (coordinator.joins, coordinator.stale_beats)
