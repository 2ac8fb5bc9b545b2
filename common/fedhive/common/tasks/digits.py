"""Quickstart task: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Data layout (what ``fedhive simulate`` writes): a node's ``data_dir`` holds ``train.npz`` with
``x`` (float32, N x 8 x 8, values in [0, 1]) and ``y`` (int64 labels 0-9); the node keeps a seeded
``val_fraction`` of it aside for federated evaluation. The coordinator's ``data_dir`` (its
``eval_data``) holds ``test.npz`` for held-out evaluation.

Training config keys (sent by the coordinator each round): ``epochs``, ``batch_size``, ``lr``,
``momentum``, ``weight_decay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedhive.common.errors import TaskError
from fedhive.common.partition import read_npz
from fedhive.common.task import EvalResult, FitResult, Scalar, TaskContext

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


def _as_int(config: Mapping[str, Scalar], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise TaskError(f"training config {key!r} must be an integer, got {value!r}")
    if value < 1:
        raise TaskError(f"training config {key!r} must be >= 1, got {value}")
    return int(value)


def _as_float(config: Mapping[str, Scalar], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TaskError(f"training config {key!r} must be a number >= 0, got {value!r}")
    return float(value)


class DigitsTask:
    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.device = torch.device(ctx.device)
        self.width = int(ctx.args.get("width", 16))
        val_fraction = float(ctx.args.get("val_fraction", 0.2))
        self.train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val: tuple[torch.Tensor, torch.Tensor] | None = None
        if ctx.data_dir is None:
            return
        data_dir = Path(ctx.data_dir)
        if ctx.role == "node":
            x, y = self._read(data_dir / "train.npz")
            rng = np.random.default_rng(ctx.seed)
            order = rng.permutation(len(y))
            n_val = round(len(y) * val_fraction) if len(y) > 4 else 0
            val_idx, train_idx = order[:n_val], order[n_val:]
            self.train = self._tensors(x[train_idx], y[train_idx])
            if n_val:
                self.val = self._tensors(x[val_idx], y[val_idx])
        else:
            self.val = self._tensors(*self._read(data_dir / "test.npz"))

    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not path.is_file():
            raise TaskError(f"digits task: data file not found: {path}")
        x, y = read_npz(path)
        if x.ndim != 3 or x.shape[1:] != (8, 8) or len(x) != len(y):
            raise TaskError(
                f"digits task: {path} must hold x of shape (N, 8, 8) and y of shape (N,)"
            )
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise TaskError(f"digits task: labels in {path} must be in 0..{NUM_CLASSES - 1}")
        return x, y

    @staticmethod
    def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        )

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.ctx.seed)
        return DigitsCNN(self.width)

    def num_examples(self) -> int:
        return 0 if self.train is None else len(self.train[1])

    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        if self.train is None:
            raise TaskError("digits task: this node has no training data (data_dir unset)")
        epochs = _as_int(config, "epochs", 2)
        batch_size = _as_int(config, "batch_size", 16)
        lr = _as_float(config, "lr", 0.05)
        momentum = _as_float(config, "momentum", 0.9)
        weight_decay = _as_float(config, "weight_decay", 0.0)
        rnd = int(config.get("round", 0))
        x, y = self.train
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        gen = torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + rnd)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), batch_size):
                idx = order[start : start + batch_size]
                xb, yb = x[idx].to(self.device), y[idx].to(self.device)
                opt.zero_grad(set_to_none=True)
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits, yb)
                loss.backward()
                opt.step()
                loss_sum += float(loss) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
        return FitResult(
            num_examples=len(y),
            metrics={"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)},
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, config: Mapping[str, Scalar]) -> EvalResult | None:
        if self.val is None:
            return None
        x, y = self.val
        model.eval()
        logits = model(x.to(self.device))
        loss = nn.functional.cross_entropy(logits, y.to(self.device))
        acc = (logits.argmax(1).cpu() == y).float().mean()
        return EvalResult(
            num_examples=len(y), metrics={"loss": float(loss), "accuracy": float(acc)}
        )


def make_task(ctx: TaskContext) -> DigitsTask:
    return DigitsTask(ctx)


def prepare_simulation(
    root: Path, nodes: int, alpha: float | None, seed: int
) -> tuple[Path, list[Path]]:
    """Write a held-out test set and one ``train.npz`` per node (Dirichlet(alpha) label skew)."""
    from fedhive.common.partition import class_histogram, dirichlet_split, iid_split, write_npz

    x, y = load_digits_arrays()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = len(y) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    server_dir = Path(root) / "server"
    write_npz(server_dir / "test.npz", x[test_idx], y[test_idx])
    x_train, y_train = x[train_idx], y[train_idx]
    if alpha is None:
        parts = iid_split(y_train, nodes, seed)
    else:
        parts = dirichlet_split(y_train, nodes, alpha, seed)
    dirs = []
    for i, part in enumerate(parts):
        d = Path(root) / f"node-{i}"
        write_npz(d / "train.npz", x_train[part], y_train[part])
        dirs.append(d)
    hist = class_histogram(y_train, parts, NUM_CLASSES)
    print("examples per class (rows: nodes, columns: digits 0-9)")
    for i, row in enumerate(hist):
        print(f"  node-{i}: {' '.join(f'{v:3d}' for v in row)}  total {row.sum()}")
    return server_dir, dirs
