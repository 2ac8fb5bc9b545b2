"""The node's side of DP-SGD: its ledger, arming it for a round, the epsilon it reports.

The node keeps its ledger (:class:`~fedhive.common.privacy.sgd.PrivacyLedger`) in
``state_dir/dp-ledger.json`` (``state_dir`` defaults to the node's data folder), one entry per
round it trained with DP-SGD, per run: a restarted node picks up what it spent in the same run.
Without a folder the ledger lives in memory and a restart forgets it (the node warns).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fedhive.common.config import ClientConfig
from fedhive.common.errors import TaskError
from fedhive.common.privacy.sgd import KEY_PREFIX, PrivacyLedger, SgdRound

log = logging.getLogger("fedhive.client")

LEDGER_FILE = "dp-ledger.json"


def make_ledger(config: ClientConfig) -> PrivacyLedger:
    folder = config.state_dir or config.data_dir
    return PrivacyLedger(
        config.max_epsilon, config.dp_delta, folder / LEDGER_FILE if folder else None
    )


def split(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the task's config, the round's DP-SGD keys)."""
    task = {k: v for k, v in config.items() if not k.startswith(KEY_PREFIX)}
    return task, {k: v for k, v in config.items() if k.startswith(KEY_PREFIX)}


def arm(ledger: PrivacyLedger, round_: int, keys: Mapping[str, Any]) -> SgdRound | None:
    """Arm the ledger for a training round (TaskError on bad keys)."""
    settings = SgdRound.from_config(keys)
    if settings is not None and ledger.path is None and not ledger.history:
        log.warning(
            "DP-SGD: no state folder (--state-dir or --data): this node's privacy ledger lives "
            "in memory, and a restart forgets what it spent"
        )
    ledger.arm(round_, settings)
    return settings


def reported_epsilon(ledger: PrivacyLedger, settings: SgdRound | None) -> float | None:
    """The epsilon the update reports (at the run's delta); None without DP-SGD. A DP-SGD round
    the task trained without spending from the ledger is refused here: its update must not go."""
    if settings is None:
        return None
    if ledger.spent_round != ledger.round:
        raise TaskError(
            "the run asks for DP-SGD but this node's task trained without it (its training loop "
            "must be the shared Trainer, passed the node's ledger: TaskContext.privacy)"
        )
    return ledger.epsilon(settings.delta)
