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


def shard_split(y: np.ndarray, nodes: int, shards_per_node: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al.): sort by label, cut ``nodes * shards_per_node``
    equal shards, give each node ``shards_per_node`` of them at random."""
    if nodes < 1 or shards_per_node < 1:
        raise ValueError("nodes and shards_per_node must be >= 1")
    total = nodes * shards_per_node
    if total > len(y):
        raise ValueError(f"{total} shards need at least {total} examples, got {len(y)}")
    rng = np.random.default_rng(seed)
    by_label = np.argsort(y, kind="stable")
    shards = np.array_split(by_label, total)
    order = rng.permutation(total)
    return [
        np.sort(np.concatenate([shards[s] for s in order[i::nodes]])).astype(np.int64)
        for i in range(nodes)
    ]


Scheme = str  # "iid" | "dirichlet" | "shards"


def split_indices(
    y: np.ndarray,
    nodes: int,
    scheme: Scheme = "dirichlet",
    *,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """One entry point for every split: ``iid``, ``dirichlet`` (alpha) or ``shards``."""
    if scheme == "iid":
        return iid_split(y, nodes, seed)
    if scheme == "dirichlet":
        return dirichlet_split(y, nodes, alpha, seed, min_per_node=min(10, len(y) // (2 * nodes)))
    if scheme == "shards":
        return shard_split(y, nodes, shards_per_node, seed)
    raise ValueError(f"unknown partition scheme {scheme!r} (iid, dirichlet, shards)")


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out) index arrays, seeded."""
    order = np.random.default_rng(seed).permutation(n)
    k = round(n * fraction)
    return np.sort(order[k:]), np.sort(order[:k])


def format_histogram(hist: np.ndarray, class_names: list[str]) -> str:
    width = max(4, *(len(c) for c in class_names[:12]))
    head = "node     " + " ".join(f"{c[:width]:>{width}}" for c in class_names) + "   total"
    rows = [head]
    for i, row in enumerate(hist):
        cells = " ".join(f"{int(v):>{width}d}" for v in row)
        rows.append(f"node-{i:<3d} {cells}   {int(row.sum()):5d}")
    return "\n".join(rows)
