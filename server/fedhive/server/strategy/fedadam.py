"""FedAdam (Reddi et al., 2021, "Adaptive federated optimization"), with Flower's bias correction.

``d = mean - global``; ``m = b1 m + (1 - b1) d``; ``v = b2 v + (1 - b2) d^2``;
``global <- global + eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class FedAdamArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(default=0.1, gt=0, description="server learning rate")
    beta_1: float = Field(default=0.9, ge=0, lt=1)
    beta_2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-9, gt=0, description="adaptivity (epsilon)")


class FedAdam:
    moments: tuple[str, ...] = ("m", "v")

    def __init__(self, **args: float) -> None:
        self.args = FedAdamArgs(**args)

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        a = self.args
        delta = mean - current
        m, v = state["m"], state["v"]
        m *= a.beta_1
        m += (1 - a.beta_1) * delta
        delta *= delta
        v *= a.beta_2
        v += (1 - a.beta_2) * delta
        eta = a.eta * np.sqrt(1 - np.power(a.beta_2, t + 1.0)) / (1 - np.power(a.beta_1, t + 1.0))
        return current + eta * m / (np.sqrt(v) + a.tau)
