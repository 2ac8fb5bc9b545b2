"""A run's stored settings against the settings it is resumed with."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.server.store import RunStore


def settings(**overrides: object) -> dict[str, object]:
    return ServerConfig(insecure=True, **overrides).model_dump(mode="json")  # type: ignore[arg-type]


def test_a_setting_added_later_at_its_default_does_not_block_a_resume(tmp_path: Path) -> None:
    # Prepare: a run stored by an older fedhive, which had no strategy settings
    old = {k: v for k, v in settings().items() if k not in ("strategy", "strategy_args")}
    store = RunStore(tmp_path / "run")
    store.create(old, "r1")

    # Execute
    point = store.open_existing(settings())

    # Assert
    assert point.run_id == "r1"


def test_a_setting_added_later_but_changed_is_named(tmp_path: Path) -> None:
    # Prepare
    old = {k: v for k, v in settings().items() if k not in ("strategy", "strategy_args")}
    store = RunStore(tmp_path / "run")
    store.create(old, "r1")

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"differs in: strategy\)"):
        store.open_existing(settings(strategy="fedmedian"))
