"""What a coordinator waiting for nodes says: whom it expects, who is connected, for how long.

A restarted coordinator knows the run's nodes from its registry (``run.sqlite``) before any of
them is back; an operator watching it wait should see their names, not just a count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

WAIT_LOG_INTERVAL_S = 30.0  # how often a coordinator still waiting says so again
MAX_NAMED = 20  # node names listed in one line; the rest are counted


@dataclass(frozen=True)
class Known:
    """A node of the run's registry as the waiting coordinator sees it."""

    node_id: str
    connected: bool
    left: bool = False


def _names(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")


def waiting_message(
    needed: int, nodes: Iterable[Known], waited_s: float, timeout_s: float, what: str
) -> str:
    """One line: ``needed`` nodes wanted for ``what``, who is connected, who is missing."""
    nodes = sorted(nodes, key=lambda n: n.node_id)
    connected = [n.node_id for n in nodes if n.connected]
    missing = [n.node_id + (" (left)" if n.left else "") for n in nodes if not n.connected]
    parts = [f"waiting for {needed} node(s) to {what}: {len(connected)} connected"]
    if nodes and all(n.left for n in nodes):
        parts[0] = f"every node of the run has left; waiting for new nodes to {what}"
    if connected:
        parts[0] += f" ({_names(connected)})"
    if missing:
        parts.append(f"not connected: {_names(missing)}")
    else:
        parts.append("no other node is known to this run yet")
    left = max(0.0, timeout_s - waited_s)
    parts.append(f"waited {waited_s:.0f}s of the {timeout_s:g}s join timeout ({left:.0f}s left)")
    return "; ".join(parts)


def nobody_left(gone: list[str], what: str) -> str:
    """Why a retry does not wait: the nodes of the failed attempt told the run they are gone."""
    return (
        f"every node has left the run ({_names(gone)}) after the failed attempt: nobody to "
        f"{what} with (a node that declines a round it cannot train, or stops, leaves)"
    )


class WaitLog:
    """Says it at once, then every ``interval_s`` while the wait lasts."""

    def __init__(self, started: float, interval_s: float = WAIT_LOG_INTERVAL_S) -> None:
        self.started = started
        self.interval_s = interval_s
        self._next = started

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True
