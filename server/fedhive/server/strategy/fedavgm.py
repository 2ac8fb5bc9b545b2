"""FedAvgM (Hsu et al., 2019, "Measuring the effects of non-identical data distribution for
federated visual classification"): server momentum on the pseudo-gradient.

``g = global - mean``; ``v = momentum * v + g`` (``v = g`` on the first step);
``global <- global - lr * v``. With ``lr = 1`` and ``momentum = 0`` it is FedAvg.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class FedAvgMArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    server_learning_rate: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.0, ge=0, lt=1)


class FedAvgM:
    moments: tuple[str, ...] = ("velocity",)

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        self.args = FedAvgMArgs(
            server_learning_rate=server_learning_rate, server_momentum=server_momentum
        )

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        grad = current - mean
        if self.args.server_momentum > 0.0:
            velocity = state["velocity"]
            velocity *= self.args.server_momentum  # zeros on the first step: v = g
            velocity += grad
            grad = velocity
        return current - self.args.server_learning_rate * grad
