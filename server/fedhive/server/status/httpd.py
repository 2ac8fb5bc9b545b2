"""The status page's HTTP server: uvicorn in a thread the coordinator owns, starts and joins."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from fedhive.common.errors import ConfigError
from fedhive.common.status_config import StatusConfig

log = logging.getLogger("fedhive.server.status")

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02


class StatusServer:
    """Serve ``app`` on the configured address until :meth:`stop`."""

    def __init__(self, app: Any, config: StatusConfig) -> None:
        self.config = config
        ssl: dict[str, Any] = {}
        if config.tls_cert is not None and config.tls_key is not None:
            ssl = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http="h11",  # pure Python; the page needs no websockets
                ws="none",
                server_header=False,
                timeout_graceful_shutdown=1,
                limit_concurrency=64,  # a read-only page: a flood gets 503, not the coordinator
                **ssl,
            )
        )
        self.thread = threading.Thread(target=self._serve, name="fedhive-status", daemon=True)
        self.port = 0
        self._failed: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # uvicorn exits (SystemExit) when it cannot bind
            self._failed = exc

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert is not None else "http"

    @property
    def url(self) -> str:
        host = self.config.host
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> StatusServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                why = f": {self._failed!r}" if self._failed else ""
                raise ConfigError(
                    f"the status page cannot listen on {self.config.host}:{self.config.port} "
                    f"(address in use or not this machine's?){why}"
                )
            time.sleep(POLL_S)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        if self.config.exposed and self.config.tls_cert is None:
            log.warning(
                "the status page on %s is reachable from other hosts over plain HTTP: its "
                "bearer token travels in clear; give [status] tls_cert and tls_key",
                self.url,
            )
        log.info("status page on %s (Prometheus metrics at %smetrics)", self.url, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(STOP_TIMEOUT_S)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(STOP_TIMEOUT_S)
