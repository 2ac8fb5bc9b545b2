"""The run's ``[dp]`` table (the coordinator's config): shared fields and one sub-table per level.

``delta`` is the run's delta (every level's epsilon is reported at it); ``max_epsilon`` the run's
budget. ``[dp.sgd]`` turns on record-level DP-SGD at each site (:mod:`fedhive.common.privacy.sgd`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.privacy.sgd import SgdDPSettings


class DPSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(default=1e-5, gt=0, lt=1, allow_inf_nan=False)
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    sgd: SgdDPSettings | None = None
