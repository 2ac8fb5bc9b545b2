"""A hostile consortium member for the strategy tests: it trains the digits task like everyone
else, then sends its weights sign-flipped and scaled (a model-poisoning attack). With the task
argument ``poison = 0`` it is an honest digits member (the coordinator's side is the digits task's),
so one federation of standing nodes can hold both kinds for several runs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedhive.common.api.task import FitResult, Scalar, TaskContext, exchanged_state
from fedhive.common.tasks.digits import DigitsTask

SCALE = 10.0


class HostileDigits(DigitsTask):
    known_args = DigitsTask.known_args | {"poison"}

    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        result = super().fit(model, config)
        if not int(self.arg("poison", 1)):
            return result
        with torch.no_grad():
            for tensor in exchanged_state(model, self).values():
                if tensor.is_floating_point():
                    tensor.mul_(-SCALE)
        return result


def make_task(ctx: TaskContext) -> HostileDigits:
    return HostileDigits(ctx)
