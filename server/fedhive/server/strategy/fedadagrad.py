"""FedAdagrad (Reddi et al., 2021, "Adaptive federated optimization"), as Flower runs it
(no first moment: ``beta_1 = 0``).

``d = mean - global``; ``v = v + d^2``; ``global <- global + eta * d / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.server.strategy.fedopt import Moments


class FedAdagradArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(default=0.1, gt=0, description="server learning rate")
    tau: float = Field(default=1e-9, gt=0, description="adaptivity (epsilon)")


class FedAdagrad(Moments):
    def __init__(self, **args: float) -> None:
        super().__init__("v")
        self.args = FedAdagradArgs(**args)

    def step(self, index: int, current: np.ndarray, average: np.ndarray, t: int) -> np.ndarray:
        a = self.args
        delta = average - current
        v = self.get("v", index)
        v = delta * delta if v is None else v + delta * delta
        self.put("v", index, v)
        return current + a.eta * delta / (np.sqrt(v) + a.tau)
