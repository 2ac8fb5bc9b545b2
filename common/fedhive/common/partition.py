"""Splitting a labelled data set across nodes (IID or Dirichlet label skew), seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def iid_split(y: np.ndarray, nodes: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(y)), nodes)]


def dirichlet_split(
    y: np.ndarray, nodes: int, alpha: float, seed: int, min_per_node: int = 10
) -> list[np.ndarray]:
    """Label skew: each class is spread over nodes by proportions drawn from Dir(alpha).

    Redraws (up to 100 times) until every node holds at least ``min_per_node`` examples.
    """
    if nodes < 1:
        raise ValueError("nodes must be >= 1")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(nodes, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for node, piece in enumerate(np.split(idx, cuts)):
                parts[node].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_per_node:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give every node {min_per_node} examples with alpha={alpha}")


def class_histogram(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(path)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]
