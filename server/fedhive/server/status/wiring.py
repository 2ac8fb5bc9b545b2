"""The status page and metrics of one coordinator: built from ``[status]``, owned by the server.

:class:`StatusPart` is made before the round engine (its metrics listen through the engine's
listener seam, beside the progress display) and started once the engine exists (it reads the live
node registry); :class:`~fedhive.server.app.RunningServer` stops it. A service of many runs makes
one with ``RunDirs.under(STATE_DIR / "runs")``, attaches each run's engine as it starts
(:meth:`StatusPart.attach`), and sets the queue length (``metrics.set_queue_length``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.server.status.httpd import StatusServer
from fedhive.server.status.metrics import FederationMetrics, Listeners
from fedhive.server.status.runs import RunDirs
from fedhive.server.status.web import StatusSources, build_app


def node_rows(coordinator: Any) -> list[dict[str, Any]]:
    """The live registry as the page shows it (``last_seen_s``: seconds since its last call)."""
    timeout = coordinator.config.heartbeat_timeout_s
    now = time.monotonic()
    rows = []
    for node in coordinator.nodes().values():
        age = max(0.0, now - node.last_seen)
        rows.append(
            {
                "node_id": node.node_id,
                "name": node.name,
                "device": node.device,
                "examples": node.num_examples,
                "connected": node.alive and not node.finished and age <= timeout,
                "finished": node.finished,
                "last_seen_s": round(age, 1),
            }
        )
    return rows


class StatusPart:
    def __init__(self, config: ServerConfig, runs: RunDirs | None = None) -> None:
        if config.status is None:
            raise ConfigError("the status page is off: no [status] settings")
        self.config = config.status
        self.token = self.config.read_token()  # a bad token file stops the start, not a request
        self.metrics = FederationMetrics()
        self.runs = runs or RunDirs.single(config.run_dir)
        self.server: StatusServer | None = None
        self.coordinator: Any = None  # the engine of the run under way (None: none)
        self.names: Callable[[], Mapping[str, str]] = dict  # a service's run names, by run id

    def listener(self, other: Any = None) -> Listeners:
        """The engine's listener: ``other`` (e.g. the progress display), then the metrics."""
        return Listeners(other, self.metrics)

    def attach(self, coordinator: Any) -> None:
        """Follow ``coordinator`` (a service attaches each run's engine as it starts it)."""
        self.coordinator = coordinator

    def nodes(self) -> list[dict[str, Any]]:
        coordinator = self.coordinator
        return [] if coordinator is None else node_rows(coordinator)

    def live_run_id(self) -> str | None:
        coordinator = self.coordinator
        return None if coordinator is None else str(coordinator.run_id)

    def start(self, coordinator: Any = None, queue_length: int = 1) -> StatusServer:
        """Serve the page (``coordinator``: the run under way, if any; a service attaches each
        run's engine as it starts it, and sets the queue length as it changes)."""
        self.attach(coordinator)
        self.metrics.watch_nodes(lambda: sum(1 for n in self.nodes() if n["connected"]))
        self.metrics.set_queue_length(queue_length)
        sources = StatusSources(
            self.runs,
            self.metrics,
            self.nodes,
            self.live_run_id,
            self.config.max_rounds_shown,
            self.names,
        )
        app = build_app(sources, token=self.token, page=self.config.page)
        self.server = StatusServer(app, self.config).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
