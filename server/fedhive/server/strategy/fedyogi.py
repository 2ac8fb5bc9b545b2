"""FedYogi (Reddi et al., 2021, "Adaptive federated optimization").

``d = mean - global``; ``m = b1 m + (1 - b1) d``; ``v = v - (1 - b2) d^2 sign(v - d^2)``;
``global <- global + eta * m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedhive.server.strategy.fedopt import AdaptiveArgs, first_moment


class FedYogiArgs(AdaptiveArgs):
    eta: float = Field(default=0.01, gt=0, description="server learning rate")
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
        m = first_moment(state["m"], delta, a.beta_1)
        v = state["v"]
        delta *= delta
        v -= (1.0 - a.beta_2) * delta * np.sign(v - delta)
        return current + a.eta * m / (np.sqrt(v) + a.tau)
