"""A task module whose prepare_simulation knows only the classic signature."""

from __future__ import annotations

from pathlib import Path


def prepare_simulation(root: Path, nodes: int, alpha: float | None, seed: int) -> tuple[Path, list]:
    return root, [root] * nodes
