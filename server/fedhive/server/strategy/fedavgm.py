"""FedAvgM (Hsu et al., 2019, "Measuring the effects of non-identical data distribution for
federated visual classification"): server momentum on the pseudo-gradient.

``g = global - mean``; ``v = momentum * v + g`` (``v = g`` on the first step);
``global <- global - lr * v``. With ``lr = 1`` and ``momentum = 0`` it is FedAvg.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.server.strategy.fedopt import Moments


class FedAvgMArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    server_learning_rate: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.0, ge=0, lt=1)


class FedAvgM(Moments):
    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        super().__init__("velocity")
        self.args = FedAvgMArgs(
            server_learning_rate=server_learning_rate, server_momentum=server_momentum
        )

    def step(self, index: int, current: np.ndarray, average: np.ndarray, t: int) -> np.ndarray:
        grad = current - average
        if self.args.server_momentum > 0.0:
            velocity = self.get("velocity", index)
            if velocity is not None:
                grad = self.args.server_momentum * velocity + grad
            self.put("velocity", index, grad)
        return current - self.args.server_learning_rate * grad
