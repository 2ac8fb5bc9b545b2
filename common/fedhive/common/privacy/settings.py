"""``[dp]``: the run's differential privacy (one optional sub-table per level), validated at the
edge. Shared fields: ``delta`` (every epsilon of the run is reported at it) and ``max_epsilon``
(the run's budget: the coordinator stops before the central or distributed round that would
exceed it; under DP-SGD it travels to the sites, whose ledgers decline a round past it, and a
``target_epsilon`` above it is refused here).

Refusals that involve other settings of the run (secure aggregation, the nodes) are in
:func:`check_run`, called by the coordinator's config; the strategy's are checked where the
strategy is built (:func:`fedhive.server.privacy.central.wrap_central`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedhive.common.privacy.central import CentralDPSettings
from fedhive.common.privacy.distributed import DistributedDPSettings
from fedhive.common.privacy.sgd import SgdDPSettings

LEVELS = ("sgd", "central", "distributed")


class DPSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(default=1e-5, gt=0, lt=1, allow_inf_nan=False)
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    sgd: SgdDPSettings | None = None  # record-level DP-SGD at each site (privacy.sgd)
    central: CentralDPSettings | None = None
    distributed: DistributedDPSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> DPSettings:
        on = [level for level in LEVELS if getattr(self, level, None) is not None]
        if not on:
            raise ValueError(
                "[dp] enables no level: add [dp.sgd], [dp.central] or [dp.distributed]"
            )
        if (
            self.sgd is not None
            and self.sgd.target_epsilon is not None
            and self.max_epsilon is not None
            and self.sgd.target_epsilon > self.max_epsilon
        ):
            raise ValueError(
                f"[dp.sgd] target_epsilon = {self.sgd.target_epsilon:g} is above the run's [dp] "
                f"max_epsilon = {self.max_epsilon:g}: every site would spend past the budget by "
                "the last round; lower target_epsilon or raise max_epsilon"
            )
        if "central" in on and "distributed" in on:
            raise ValueError(
                "[dp.central] and [dp.distributed] together: central DP needs the coordinator "
                "to see each update, distributed DP exists because it does not; choose one"
            )
        return self


def check_run(dp: DPSettings | None, *, secure_aggregation: str, min_nodes: int) -> None:
    """Refuse (``ValueError`` naming the settings) the ``[dp]`` settings the run cannot honour."""
    if dp is None or dp.central is None:
        return
    if secure_aggregation != "none":
        raise ValueError(
            f"[dp.central] with secure_aggregation = {secure_aggregation!r}: the coordinator "
            "cannot clip updates it never sees; use [dp.distributed] (each node clips its delta "
            "and adds its share of the noise before masking), or no secure aggregation"
        )
    if dp.delta >= 1.0 / min_nodes:
        raise ValueError(
            f"[dp] delta = {dp.delta:g} is not below 1 / min_nodes = {1.0 / min_nodes:g}: "
            "node-level DP with delta >= 1/nodes allows revealing a whole node's update; use a "
            "delta far below 1/nodes (e.g. 1e-5)"
        )
