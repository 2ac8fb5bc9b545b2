"""FedAdagrad (Reddi et al., 2021, "Adaptive federated optimization"), as Flower runs it
(no first moment: ``beta_1 = 0``).

``d = mean - global``; ``v = v + d^2``; ``global <- global + eta * d / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class FedAdagradArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    eta: float = Field(default=0.1, gt=0, description="server learning rate")
    tau: float = Field(default=1e-9, gt=0, description="adaptivity (epsilon)")


class FedAdagrad:
    moments: tuple[str, ...] = ("v",)

    def __init__(self, **args: float) -> None:
        self.args = FedAdagradArgs(**args)

    def step(
        self, state: dict[str, np.ndarray], current: np.ndarray, mean: np.ndarray, t: int
    ) -> np.ndarray:
        a = self.args
        delta = mean - current
        v = state["v"]
        v += delta * delta
        return current + a.eta * delta / (np.sqrt(v) + a.tau)
