"""FedAdam (Reddi et al., 2021, "Adaptive federated optimization"), with Flower's bias correction.

``d = mean - global``; ``m = b1 m + (1 - b1) d``; ``v = b2 v + (1 - b2) d^2``;
``global <- global + eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np

from fedhive.server.strategy.fedopt import AdaptiveArgs, first_moment


class FedAdamArgs(AdaptiveArgs):
    pass


class FedAdam:
    moments: tuple[str, ...] = ("m", "v")

    def __init__(self, **args: float) -> None:
        self.args = FedAdamArgs(**args)

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        a = self.args
        delta = mean - current
        m = first_moment(state["m"], delta, a.beta_1)
        v = state["v"]
        delta *= delta
        v *= a.beta_2
        v += (1 - a.beta_2) * delta
        eta = a.eta * np.sqrt(1 - np.power(a.beta_2, t + 1.0)) / (1 - np.power(a.beta_1, t + 1.0))
        return current + eta * m / (np.sqrt(v) + a.tau)
