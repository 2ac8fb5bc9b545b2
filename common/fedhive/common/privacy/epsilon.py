"""Reading a round record's ``privacy`` field: each level's epsilon, whatever level wrote it.

``privacy`` maps a level ("sgd", "central", "distributed", or one a later version adds) to a
table with the level's epsilon at the run's delta: ``"epsilon"``, or ``"max"`` (DP-SGD: the
largest of the nodes' epsilons). The progress display and ``fedhive report`` show these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

EPSILON_KEYS = ("epsilon", "max")


def epsilons(record: Mapping[str, Any]) -> dict[str, float]:
    """Level -> epsilon of a round record (levels without a finite number are left out)."""
    privacy = record.get("privacy")
    out: dict[str, float] = {}
    if not isinstance(privacy, Mapping):
        return out
    for level, entry in sorted(privacy.items()):
        if not isinstance(entry, Mapping):
            continue
        for key in EPSILON_KEYS:
            value = entry.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    out[str(level)] = float(value)
                break
    return out


def epsilon_text(record: Mapping[str, Any]) -> str:
    """``"eps central=1.23 sgd=0.98"`` (empty without privacy)."""
    found = epsilons(record)
    if not found:
        return ""
    return "eps " + " ".join(f"{level}={value:.3f}" for level, value in found.items())
