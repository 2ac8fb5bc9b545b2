"""Reconnect pacing shared by a node's session and a standing node: exponential backoff with
jitter, bounded by ``backoff_max_s``, giving up after ``max_connect_attempts``."""

from __future__ import annotations

import random
import threading

from fedhive.common.config import ClientConfig
from fedhive.common.errors import TransportError

MAX_DOUBLINGS = 30  # the exponent's cap (2**30 x backoff_initial_s is past any backoff_max_s)


class Backoff:
    def __init__(self, config: ClientConfig, stop_event: threading.Event) -> None:
        self.config = config
        self.stop_event = stop_event
        self.attempt = 0

    def wait(self) -> None:
        """Wait before the next attempt (shorter if stopped); TransportError past the limit."""
        cfg = self.config
        delay = min(
            cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(self.attempt, MAX_DOUBLINGS))
        )
        self.attempt += 1
        if cfg.max_connect_attempts is not None and self.attempt >= cfg.max_connect_attempts:
            raise TransportError(
                f"coordinator at {cfg.server} unreachable after {self.attempt} attempts"
            )
        self.stop_event.wait(delay * random.uniform(0.5, 1.0))

    def reset(self) -> None:
        """The coordinator answered: the next wait starts short again."""
        self.attempt = 0
