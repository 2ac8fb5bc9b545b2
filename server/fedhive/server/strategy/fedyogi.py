"""FedYogi (Reddi et al., 2021, "Adaptive federated optimization").

``d = mean - global``; ``m = b1 m + (1 - b1) d``; ``v = v - (1 - b2) d^2 sign(v - d^2)``;
``global <- global + eta * m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class FedYogiArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(default=0.01, gt=0, description="server learning rate")
    beta_1: float = Field(default=0.9, ge=0, lt=1)
    beta_2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0, description="adaptivity (epsilon)")


class FedYogi:
    moments: tuple[str, ...] = ("m", "v")

    def __init__(self, **args: float) -> None:
        self.args = FedYogiArgs(**args)

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        a = self.args
        delta = mean - current
        m, v = state["m"], state["v"]
        m *= a.beta_1
        m += (1 - a.beta_1) * delta
        delta *= delta
        v -= (1.0 - a.beta_2) * delta * np.sign(v - delta)
        return current + a.eta * m / (np.sqrt(v) + a.tau)
