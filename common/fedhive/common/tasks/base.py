"""A base for classification tasks on in-memory tensors: the Task protocol on top of
:class:`~fedhive.common.tasks.training.Trainer`.

A subclass loads its data into ``self.train`` / ``self.val`` (lists of tensors, labels last) and
implements ``build_model``; it may set ``train_defaults`` (filled in under the coordinator's
config), ``forward`` (how a batch's inputs reach the model) and ``exchanged`` (what travels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedhive.common.api.task import EvalResult, FitResult, Scalar, TaskContext
from fedhive.common.errors import TaskError
from fedhive.common.tasks.training import (
    TrainConfig,
    Trainer,
    default_forward,
    parse_train_config,
    split_validation,
)


class ClassificationTask:
    name: ClassVar[str] = "task"
    train_defaults: ClassVar[Mapping[str, Scalar]] = {}
    config_model: ClassVar[type[TrainConfig]] = TrainConfig
    # the task_args a subclass reads (``val_fraction`` is always known): any other key is
    # refused at load, on the coordinator before its run is created as on every node
    known_args: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.train: list[torch.Tensor] | None = None
        self.val: list[torch.Tensor] | None = None
        self.trainer = Trainer(ctx.device, forward=self.forward)
        self.last_config: TrainConfig | None = None
        self.defaults: dict[str, Scalar] = dict(self.train_defaults)
        known = self.known_args | {"val_fraction"}
        unknown = sorted(set(ctx.args) - known)
        if unknown:
            raise TaskError(
                f"{self.name} task: unknown task_args {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )

    # ---------------------------------------------------------------- data helpers

    def arg(self, key: str, default: Any) -> Any:
        value = self.ctx.args.get(key, default)
        if default is not None and not isinstance(default, str) and isinstance(value, str):
            raise TaskError(f"{self.name} task: task_args {key!r} must be a number, got {value!r}")
        return value

    def read(self, path: Path, split: str) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def load_data(self) -> None:
        """A node reads its ``train`` split (and keeps a validation share); the coordinator its
        held-out ``test`` split. Nothing without a data folder."""
        if self.ctx.data_dir is None:
            return
        node = self.ctx.role == "node"
        data = self.read(Path(self.ctx.data_dir), "train" if node else "test")
        if node:
            self.set_node_data(data)
        else:
            self.val = data

    def set_node_data(self, tensors: Sequence[torch.Tensor]) -> None:
        """Split a node's data into train and a seeded local validation share."""
        fraction = float(self.arg("val_fraction", 0.2))
        if not 0 <= fraction < 1:
            raise TaskError(f"{self.name} task: val_fraction must be in [0, 1), got {fraction}")
        train_idx, val_idx = split_validation(len(tensors[-1]), fraction, self.ctx.seed)
        tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        self.train = [t[tr] for t in tensors]
        self.val = [t[va] for t in tensors] if len(val_idx) else None

    # ---------------------------------------------------------------- Task protocol

    def forward(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return default_forward(model, inputs)

    def build_model(self) -> nn.Module:  # pragma: no cover - subclasses
        raise NotImplementedError

    def num_examples(self) -> int:
        return 0 if self.train is None else len(self.train[-1])

    def config(self, config: Mapping[str, Scalar]) -> TrainConfig:
        merged = {**self.defaults, **config}
        return parse_train_config(merged, self.config_model)

    def validate_config(self, config: Mapping[str, Scalar]) -> None:
        """The optional task hook: the coordinator refuses, before its run is created, a
        ``[train]`` table that nodes would refuse at round 1 (TaskError naming each field)."""
        self.config(config)

    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        cfg = self.config(config)
        if self.train is None:
            raise TaskError(f"{self.name} task: this node has no training data (data_dir unset)")
        self.last_config = cfg
        stats = self.trainer.fit(
            model, self.train, cfg, seed=self.ctx.seed, privacy=self.ctx.privacy
        )
        return FitResult(
            num_examples=self.num_examples(), metrics={**stats.metrics, "steps": stats.steps}
        )

    def evaluate(self, model: nn.Module, config: Mapping[str, Scalar]) -> EvalResult | None:
        if self.val is None or len(self.val[-1]) == 0:
            return None
        batch = int(config.get("eval_batch_size", self.defaults.get("eval_batch_size", 256)))
        metrics = self.trainer.evaluate(model, self.val, batch_size=max(batch, 1))
        return EvalResult(num_examples=len(self.val[-1]), metrics=metrics)


def labels_tensor(y: np.ndarray, num_classes: int, where: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TaskError(f"{where}: labels must be a 1-d integer array")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise TaskError(f"{where}: labels must be in 0..{num_classes - 1}")
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
