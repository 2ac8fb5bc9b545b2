"""The run's privacy accountant and its budget (``[dp] max_epsilon``), for central and
distributed DP (DP-SGD's is enforced by each site's ledger: :mod:`fedhive.common.privacy.sgd`).

Distributed DP: before a round opens, :meth:`RunPrivacy.before_round` computes the epsilon the
run would have after it with the noise of the *expected* survivors (``plan``: the selected less
``expected_dropout``), over every round whose noised sum was unmasked, as the records hold them
(:func:`fedhive.common.privacy.distributed.past_rounds`: read from the store each time, so a
resumed run continues it). Above ``max_epsilon`` the round is not opened and the run stops. More
dropouts than expected can still take a round's recorded epsilon past the budget (the noise is
counted as delivered); the next round is then refused.

Central DP:

Each committed round is one subsampled Gaussian mechanism: sampling rate ``q = selected / alive``
(the nodes selected for the round among the connected ones), noise multiplier ``z``. Their Renyi
DP composes by addition; epsilon at the run's delta comes from the project's one accountant
(:mod:`fedhive.common.privacy.rdp`, Opacus's RDP analysis), the one every DP level uses.

The accountant's state is derived, never stored apart: every committed round's record carries its
``sample_rate`` and ``noise_multiplier`` (``privacy["central"]``), committed in the same
transaction as the round, so a restarted coordinator rebuilds the same accountant from the rounds
it finds (:meth:`RunPrivacy.for_run`). Before a round opens, :meth:`RunPrivacy.before_round`
computes the epsilon the run would have after it; above ``max_epsilon`` the round is not opened
and the run stops.

Accounting assumption (stated in docs/privacy.md): the subsampled Gaussian's analysis is for
Poisson sampling with rate ``q``; the coordinator picks a fixed number of nodes uniformly without
replacement. With ``fraction = 1`` (every connected node, ``q = 1``) there is no amplification
and the two coincide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError, FedhiveError
from fedhive.common.privacy import rdp
from fedhive.common.privacy.distributed import past_rounds, plan
from fedhive.common.privacy.settings import DPSettings
from fedhive.common.record import ROUND
from fedhive.server.pipeline import inner_of
from fedhive.server.privacy.central import CentralDP
from fedhive.server.strategy.base import Aggregator

log = logging.getLogger("fedhive.server")


class RunPrivacy:
    """The run's accountant and budget for central and distributed DP (inert without either).
    ``elements``: the model's size; ``events``: the run's records so far (distributed DP)."""

    def __init__(
        self,
        dp: DPSettings | None,
        central: CentralDP | None,
        elements: int = 0,
        events: Callable[[], Iterable[Mapping[str, Any]]] = tuple,
    ) -> None:
        self.dp = dp
        self.central = central if dp is not None and dp.central is not None else None
        self.distributed = dp.distributed if dp is not None else None
        self.elements = elements
        self.events = events
        self.rdp = rdp.zero_rdp()
        self.rounds = 0
        self._pending: dict[str, Any] | None = None

    @classmethod
    def for_run(
        cls,
        config: ServerConfig,
        aggregator: Aggregator,
        committed: Iterable[Mapping[str, Any]],
        elements: int = 0,
        events: Callable[[], Iterable[Mapping[str, Any]]] = tuple,
    ) -> RunPrivacy:
        """The run's accountant, continued from the ``committed`` events (a resumed run's)."""
        aggregator = inner_of(aggregator)  # central DP sits under the user's stages
        central = aggregator if isinstance(aggregator, CentralDP) else None
        if config.dp is not None and config.dp.central is not None and central is None:
            raise ConfigError("[dp.central]: the run's strategy is not wrapped in central DP")
        privacy = cls(config.dp, central, elements, events)
        privacy.replay(committed)
        return privacy

    @property
    def epsilon(self) -> float:
        return rdp.rdp_epsilon(self.rdp, self.dp.delta) if self.dp is not None else 0.0

    def replay(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Add the committed training rounds of ``events`` (the last record of each round)."""
        if self.central is None:
            return
        rounds: dict[int, Mapping[str, Any]] = {}
        for event in events:
            if event.get("event") == ROUND and event.get("committed"):
                rounds[int(event["round"])] = event
        for number, event in sorted(rounds.items()):
            entry = (event.get("privacy") or {}).get("central")
            if not isinstance(entry, Mapping) or not {"sample_rate", "noise_multiplier"} <= set(
                entry
            ):
                raise FedhiveError(
                    f"round {number} was committed without its central DP record: the privacy "
                    "spent so far cannot be rebuilt"
                )
            self.rdp += rdp.step_rdp(float(entry["noise_multiplier"]), float(entry["sample_rate"]))
            self.rounds += 1
        if self.rounds:
            log.info(
                "central DP: %d committed round(s) replayed, epsilon %.4f at delta %g",
                self.rounds,
                self.epsilon,
                self.dp.delta if self.dp else 0.0,
            )

    def before_round(self, number: int, selected: int, alive: int) -> str | None:
        """Why round ``number`` must not open (it would exceed ``max_epsilon``), or None; the
        round's sampling rate is ``selected / alive``. Raises ConfigError for a delta that the
        nodes connected now make meaningless (>= 1/nodes)."""
        if self.distributed is not None:
            return self._before_distributed(number, selected, alive)
        if self.central is None or self.dp is None:
            return None
        dp, z = self.dp, self.central.settings.noise_multiplier
        if dp.delta >= 1.0 / alive:
            raise ConfigError(
                f"[dp] delta = {dp.delta:g} is not below 1/nodes = 1/{alive}: node-level DP at "
                "that delta may reveal a whole node's update; use a smaller delta"
            )
        rate = selected / alive
        after = rdp.rdp_epsilon(self.rdp + rdp.step_rdp(z, rate), dp.delta)
        if dp.max_epsilon is not None and after > dp.max_epsilon:
            return (
                f"privacy budget: round {number} would bring the central epsilon to {after:.4f} "
                f"> [dp] max_epsilon = {dp.max_epsilon:g} (delta {dp.delta:g}; {self.epsilon:.4f} "
                f"spent in {self.rounds} round(s)); the run stops before it"
            )
        self._pending = {"sample_rate": rate, "epsilon": after, "selected": selected}
        self.central.expect(selected)
        return None

    def _before_distributed(self, number: int, selected: int, alive: int) -> str | None:
        dp, settings = self.dp, self.distributed
        if dp is None or settings is None or dp.max_epsilon is None:
            return None
        try:
            calibration = plan(settings, selected, self.elements)
        except ConfigError:  # the round's path refuses it, naming the settings
            return None
        past = past_rounds(self.events())
        rate = min(1.0, selected / max(alive, selected))
        z = calibration.delivered(calibration.expected)
        after = rdp.epsilon([*past, (z, rate, 1)], dp.delta)
        if after > dp.max_epsilon:
            return (
                f"privacy budget: round {number} would bring the distributed epsilon to "
                f"{after:.4f} > [dp] max_epsilon = {dp.max_epsilon:g} (delta {dp.delta:g}; "
                f"{rdp.epsilon(past, dp.delta):.4f} spent in {len(past)} round(s), noise for "
                f"{calibration.expected} of {selected} selected); the run stops before it"
            )
        return None

    def committed(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The round's ``privacy`` field (the central level's entry added to what is there);
        the accountant now includes the round. The nodes' weights are set to the fixed 1/m."""
        privacy = dict(event.get("privacy") or {})
        if self.central is None or self.dp is None or self._pending is None:
            return privacy or None
        pending, self._pending = self._pending, None
        z = self.central.settings.noise_multiplier
        self.rdp += rdp.step_rdp(z, pending["sample_rate"])
        self.rounds += 1
        for node in (event.get("nodes") or {}).values():
            node["weight"] = 1.0 / pending["selected"]
        log.info(
            "round %s: central DP epsilon %.4f at delta %g%s",
            event.get("round"),
            pending["epsilon"],
            self.dp.delta,
            f" (budget {self.dp.max_epsilon:g})" if self.dp.max_epsilon is not None else "",
        )
        privacy["central"] = {
            "delta": self.dp.delta,
            "epsilon": pending["epsilon"],
            "noise_multiplier": z,
            "clip": self.central.round_clip,
            "sample_rate": pending["sample_rate"],
            "adaptive": self.central.settings.adaptive,
        }
        return privacy
