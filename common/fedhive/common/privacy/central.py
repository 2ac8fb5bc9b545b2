"""``[dp.central]``: central node-level DP on the coordinator (the mechanism lives in
:mod:`fedhive.server.privacy.central`).

The coordinator clips each update's delta (update - current global model) to L2 norm ``clip``,
averages the clipped deltas with a fixed weight (1 / the number of nodes selected for the round,
known before any update arrives) and adds Gaussian noise of standard deviation
``noise_multiplier x clip`` to their sum. With ``adaptive = true`` the clip follows a privately
estimated quantile of the update norms (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping"): the count of unclipped updates gets its own noise (``count_noise_std``) and
the two noises together are accounted as one Gaussian mechanism of ``noise_multiplier``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

ADAPTIVE_ONLY = ("target_quantile", "clip_learning_rate", "count_noise_std")


class CentralDPSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # the accounted noise multiplier z: noise std on the sum of clipped deltas is z x clip
    # (with adaptive clipping, slightly more: see delta_noise_multiplier)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    # L2 bound of each clipped delta (with adaptive clipping, the first round's clip)
    clip: float = Field(gt=0, allow_inf_nan=False)
    adaptive: bool = False
    target_quantile: float = Field(default=0.5, gt=0, lt=1)  # gamma: the share left unclipped
    clip_learning_rate: float = Field(default=0.2, gt=0, allow_inf_nan=False)  # eta_C
    count_noise_std: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # sigma_b

    @model_validator(mode="after")
    def _check(self) -> CentralDPSettings:
        if not self.adaptive:
            stray = sorted(set(ADAPTIVE_ONLY) & self.model_fields_set)
            if stray:
                raise ValueError(f"[dp.central] {', '.join(stray)} only apply with adaptive = true")
            return self
        if self.count_noise_std is None:
            raise ValueError(
                "[dp.central] adaptive = true needs count_noise_std (the noise on the count of "
                "unclipped updates; Andrew et al. suggest the expected nodes per round / 20)"
            )
        if not 2 * self.count_noise_std > self.noise_multiplier:
            raise ValueError(
                f"[dp.central] count_noise_std = {self.count_noise_std:g} must exceed "
                f"noise_multiplier / 2 = {self.noise_multiplier / 2:g}: the count's noise takes "
                "a share of the privacy budget, and at or below that share nothing is left for "
                "the update's noise"
            )
        return self

    def delta_noise_multiplier(self) -> float:
        """The noise multiplier applied to the sum of clipped deltas.

        Fixed clipping: ``noise_multiplier``. Adaptive clipping (Andrew et al. 2021, Theorem 1):
        releasing the delta sum with z_delta and the count with sigma_b is a Gaussian mechanism
        of z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2, so z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2.
        """
        z = self.noise_multiplier
        if not self.adaptive or self.count_noise_std is None:
            return z
        return 1.0 / math.sqrt(z**-2 - (2.0 * self.count_noise_std) ** -2)
