"""The coordinator's side of record-level DP-SGD: what it sends, what it checks, what it records.

DP-SGD runs on the nodes (:mod:`fedhive.common.privacy.sgd`). The coordinator puts the run's
``[dp.sgd]`` settings into every training round's config (after the strategy's ``configure``, so
no strategy can change them), refuses an update that reports no epsilon while DP-SGD is on (the
node did not train with it: an old node, or a custom task whose loop ignores it), and records
each reporting node's epsilon and their maximum in the round record's ``privacy["sgd"]``. The
epsilon is the node's own claim, bounded on the wire (:func:`~fedhive.common.privacy.sgd.
check_epsilon_claim`): the coordinator cannot see a node's data or noise, so it cannot verify it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.privacy.settings import DPSettings
from fedhive.common.privacy.sgd import task_config

__all__ = ["check_update", "round_privacy", "task_config"]


class Reported(Protocol):
    node_id: str
    dp_epsilon: float | None


def check_update(dp: DPSettings | None, epsilon: float | None, node_id: str, round_: int) -> None:
    """Refuse an update of a DP-SGD round that reports no epsilon."""
    if dp is not None and dp.sgd is not None and epsilon is None:
        raise InvalidUpdateError(
            f"round {round_} trains with DP-SGD but the update from {node_id} reports no "
            "dp_epsilon: the node did not apply DP-SGD (an older node, or a task whose training "
            "loop ignores it)"
        )


def round_privacy(dp: DPSettings | None, contributions: Iterable[Reported]) -> dict[str, Any]:
    """The round record's ``privacy`` entries of this level (empty without ``[dp.sgd]``)."""
    if dp is None or dp.sgd is None:
        return {}
    nodes = {
        c.node_id: c.dp_epsilon
        for c in sorted(contributions, key=lambda c: c.node_id)
        if c.dp_epsilon is not None
    }
    return {
        "sgd": {
            "delta": dp.delta,
            "max": max(nodes.values(), default=0.0),
            "nodes": nodes,
            "max_grad_norm": dp.sgd.max_grad_norm,
            **({"noise_multiplier": dp.sgd.noise_multiplier} if dp.sgd.noise_multiplier else {}),
            **({"target_epsilon": dp.sgd.target_epsilon} if dp.sgd.target_epsilon else {}),
        }
    }
