"""Benchmark and test task: a model of ``params`` float numbers in ``tensors`` tensors whose
"training" adds a per-node constant. No data, no gradient: it measures the framework itself.

Args (``task_args``): ``params`` (default 1,000,000), ``tensors`` (8), ``dtype`` (float32),
``delta`` (what fit adds; default 1.0), ``examples`` (reported example count; default 100),
``train_s`` (seconds fit() takes, a stand-in for real training; default 0), ``fail_fit``
(true: fit() raises, a node whose training fails; default false).
The node's ``seed`` is added to ``delta`` and ``examples`` so nodes differ in a known way:
``delta_i = delta + seed_i`` and ``examples_i = examples + seed_i``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from fedhive.common.api.task import EvalResult, FitResult, Scalar, TaskContext
from fedhive.common.errors import TaskError


class Flat(nn.Module):
    def __init__(self, params: int, tensors: int, dtype: torch.dtype) -> None:
        super().__init__()
        sizes = [params // tensors + (1 if i < params % tensors else 0) for i in range(tensors)]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(n, dtype=dtype), requires_grad=False) for n in sizes
        )


class ConstantTask:
    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.params = int(ctx.args.get("params", 1_000_000))
        self.tensors = int(ctx.args.get("tensors", 8))
        self.dtype = getattr(torch, str(ctx.args.get("dtype", "float32")))
        self.delta = float(ctx.args.get("delta", 1.0)) + ctx.seed
        self.examples = int(ctx.args.get("examples", 100)) + ctx.seed
        self.train_s = float(ctx.args.get("train_s", 0.0))
        self.fail_fit = str(ctx.args.get("fail_fit", False)).lower() in ("1", "true")

    def build_model(self) -> nn.Module:
        model = Flat(self.params, self.tensors, self.dtype)
        with torch.no_grad():
            for i, p in enumerate(model.weights):
                p.fill_(float(i))
        return model

    def num_examples(self) -> int:
        return self.examples

    @torch.no_grad()
    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        if self.fail_fit:
            raise TaskError("constant task: fit() fails on purpose (fail_fit)")
        for p in model.parameters():
            p.add_(self.delta)
        if self.train_s > 0:
            time.sleep(self.train_s)
        return FitResult(num_examples=self.examples, metrics={"delta": self.delta})

    def evaluate(self, model: nn.Module, config: Mapping[str, Scalar]) -> EvalResult | None:
        return None


def make_task(ctx: TaskContext) -> ConstantTask:
    return ConstantTask(ctx)
