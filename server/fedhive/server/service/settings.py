"""A submitted run's settings: today's ``ServerConfig`` TOML, validated by the same model.

The service owns where and how it listens (address, TLS, worker threads ...); a run owns what it
trains (task, rounds, strategy, ...). A run's settings therefore may not set the service's fields;
the run's full ``ServerConfig`` is the service's fields plus the run's, with ``run_dir`` at
``STATE_DIR/runs/<run_id>``. The service's ``allowed_nodes`` (if any) is every run's unless the run
names a narrower list. It is composed again whenever the run starts or resumes, so the
same service settings give the same run configuration (the run directory checks it on resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhive.common.config import ServerConfig, format_validation_error
from fedhive.common.errors import ConfigError

# what belongs to the service, not to a run
SERVICE_FIELDS = (
    "address", "run_dir", "insecure", "tls_dir", "tls_cert", "tls_key", "tls_ca", "crl",
    "max_workers", "rpc_reserve", "receive_window_bytes", "progress",
)  # fmt: skip
MAX_SETTINGS_BYTES = 256 << 10  # a submitted settings document (TOML text)


def service_fields(base: ServerConfig) -> dict[str, Any]:
    dumped = base.model_dump()
    return {name: dumped[name] for name in SERVICE_FIELDS}


def run_fields(config: ServerConfig) -> dict[str, Any]:
    """A whole ServerConfig's run settings, as JSON (the one-shot service's single run)."""
    dumped = config.model_dump(mode="json", exclude_defaults=True)
    return {k: v for k, v in dumped.items() if k not in SERVICE_FIELDS}


def compose(base: ServerConfig, settings: Mapping[str, Any], run_dir: Path) -> ServerConfig:
    """The run's ServerConfig; a ConfigError with the same messages as a config file's."""
    own = sorted(set(settings) & set(SERVICE_FIELDS))
    if own:
        raise ConfigError(
            f"invalid run settings: {', '.join(own)} belong(s) to the coordinator service, not "
            "to a run; leave them out of the run's settings"
        )
    data = {**service_fields(base), **settings, "run_dir": run_dir}
    fence = base.allowed_nodes  # the service's allow-list: a run may narrow it, not widen it
    if fence is not None:
        data.setdefault("allowed_nodes", list(fence))
        wider = sorted(set(data["allowed_nodes"] or ()) - set(fence))
        if wider:
            raise ConfigError(
                f"invalid run settings: allowed_nodes names {', '.join(wider)}, outside the "
                "coordinator service's allowed_nodes"
            )
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "run settings")) from exc


def check_settings(base: ServerConfig, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a submission (as a run in a scratch directory); return it as JSON values."""
    if not isinstance(settings, Mapping):
        raise ConfigError("run settings must be a table of settings")
    config = compose(base, settings, Path("runs") / "check")
    dumped = config.model_dump(mode="json")
    return {k: dumped[k] for k in settings}
