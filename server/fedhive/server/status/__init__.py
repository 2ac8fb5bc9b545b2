"""The coordinator's read-only status page and Prometheus metrics (off by default: ``[status]``).

They need the ``status`` extra (prometheus-client, starlette, uvicorn): a node never does.
"""

from __future__ import annotations

from typing import Any

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError


def status_part(config: ServerConfig, runs: Any = None) -> Any:
    """The serving process's :class:`~fedhive.server.status.wiring.StatusPart` for ``[status]``;
    ConfigError, naming the extra, when its libraries are not installed."""
    try:
        from fedhive.server.status.wiring import StatusPart
    except ImportError as exc:
        raise ConfigError(
            f"[status] needs the status page's libraries ({exc.name} is missing): "
            "pip install 'fedhive[status]'"
        ) from exc
    return StatusPart(config, runs)
