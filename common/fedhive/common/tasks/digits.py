"""Quickstart task: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Data layout (what ``fedhive simulate`` writes): a node's ``data_dir`` holds ``train.npz`` with
``x`` (float32, N x 8 x 8, values in [0, 1]) and ``y`` (int64 labels 0-9); the node keeps a seeded
``val_fraction`` of it aside for federated evaluation. The coordinator's ``data_dir`` (its
``eval_data``) holds ``test.npz`` for held-out evaluation.

Training config (sent by the coordinator each round): any key of
:class:`~fedhive.common.tasks.training.TrainConfig` (defaults here: 2 epochs, batch 16, SGD lr 0.05
momentum 0.9). Metrics: loss, accuracy, macro-F1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedhive.common.api.task import Scalar, TaskContext
from fedhive.common.data.partition import read_npz
from fedhive.common.errors import TaskError
from fedhive.common.tasks.base import ClassificationTask, labels_tensor

NUM_CLASSES = 10


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits from scikit-learn's bundled copy (no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return x, y


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsTask(ClassificationTask):
    name = "digits"
    train_defaults: ClassVar[Mapping[str, Scalar]] = {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "momentum": 0.9,
    }
    known_args = frozenset({"width"})

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        self.width = int(self.arg("width", 16))
        if ctx.data_dir is None:
            return
        data_dir = Path(ctx.data_dir)
        if ctx.role == "node":
            self.set_node_data(self._read(data_dir / "train.npz"))
        else:
            self.val = self._read(data_dir / "test.npz")

    @staticmethod
    def _read(path: Path) -> list[torch.Tensor]:
        if not path.is_file():
            raise TaskError(f"digits task: data file not found: {path}")
        x, y = read_npz(path)
        if x.ndim != 3 or x.shape[1:] != (8, 8) or len(x) != len(y):
            raise TaskError(
                f"digits task: {path} must hold x of shape (N, 8, 8) and y of shape (N,)"
            )
        labels = labels_tensor(y, NUM_CLASSES, f"digits task: {path}")
        return [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1), labels]

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.ctx.seed)
        return DigitsCNN(self.width)


def make_task(ctx: TaskContext) -> DigitsTask:
    return DigitsTask(ctx)


def prepare_simulation(
    root: Path, nodes: int, alpha: float | None, seed: int, shards_per_node: int | None = None
) -> tuple[Path, list[Path]]:
    """Write a held-out ``test.npz`` (20%) and one ``train.npz`` per node: Dirichlet(alpha) label
    skew, IID when ``alpha`` is None, or ``shards_per_node`` label-sorted shards (the same code as
    ``fedhive partition``)."""
    from fedhive.common.cli.partition import simulation_split
    from fedhive.common.data.datasets import Labelled

    x, y = load_digits_arrays()
    data = Labelled("npz", y, [str(c) for c in range(NUM_CLASSES)], x=x)
    return simulation_split(data, Path(root), nodes, alpha, seed, shards_per_node)
