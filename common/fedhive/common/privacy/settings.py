"""The run's ``[dp]`` table: shared fields and one optional sub-table per level of privacy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.privacy.distributed import DistributedDPSettings


class DPSettings(BaseModel):
    """``[dp]``: ``delta`` is the run's delta, ``max_epsilon`` its budget (None: no budget)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    distributed: DistributedDPSettings | None = None
