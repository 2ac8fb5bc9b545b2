"""``fedhive partition``: split a labelled data set into N node folders, in the format nodes read.

    fedhive partition data/images out/ --nodes 8 --scheme dirichlet --alpha 0.3 --holdout 0.2

writes ``out/node-0 ... out/node-7`` (and ``out/server`` with the held-out share, if asked) and
prints the per-node class histogram. Schemes: ``iid``, ``dirichlet`` (label skew, ``--alpha``),
``shards`` (pathological: ``--shards-per-node`` label-sorted shards each). Seeded.
``fedhive simulate`` prepares its data with the same code (:func:`partition_dataset`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedhive.common.cli.helptext import plain
from fedhive.common.data.datasets import Labelled, load_labelled
from fedhive.common.data.partition import (
    class_histogram,
    format_histogram,
    holdout_split,
    split_indices,
)
from fedhive.common.errors import FedhiveError


def simulation_split(
    data: Labelled,
    root: Path,
    nodes: int,
    alpha: float | None,
    seed: int,
    shards_per_node: int | None,
) -> tuple[Path, list[Path]]:
    """What a task's ``prepare_simulation`` writes: a 20% held-out set for the coordinator and
    one folder per node (shards if asked, IID when ``alpha`` is None, else Dirichlet(alpha))."""
    scheme = "shards" if shards_per_node else "iid" if alpha is None else "dirichlet"
    server_dir, dirs, _ = partition_dataset(
        data, Path(root), nodes, scheme, alpha=alpha or 1.0,
        shards_per_node=shards_per_node or 2, holdout=0.2, seed=seed,
    )  # fmt: skip
    assert server_dir is not None
    return server_dir, dirs


def partition_dataset(
    data: Labelled,
    out: Path,
    nodes: int,
    scheme: str = "dirichlet",
    *,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    holdout: float = 0.0,
    seed: int = 0,
    quiet: bool = False,
) -> tuple[Path | None, list[Path], np.ndarray]:
    """Write ``out/node-i`` (and ``out/server`` when ``holdout`` > 0); returns the folders and
    the per-node class histogram."""
    if nodes < 1:
        raise ValueError("nodes must be >= 1")
    if not 0 <= holdout < 1:
        raise ValueError("holdout must be in [0, 1)")
    out = Path(out)
    rest = np.arange(len(data.labels))
    server_dir = None
    if holdout > 0:
        rest, held = holdout_split(len(data.labels), holdout, seed)
        server_dir = out / "server"
        data.write(held, server_dir, "test")
    parts = split_indices(
        data.labels[rest],
        nodes,
        scheme,
        alpha=alpha,
        shards_per_node=shards_per_node,
        seed=seed,
    )
    dirs = []
    for i, part in enumerate(parts):
        d = out / f"node-{i}"
        data.write(rest[part], d, "train")
        dirs.append(d)
    hist = class_histogram(data.labels[rest], parts, len(data.class_names))
    if not quiet:
        print(f"examples per class ({scheme}; rows: nodes, columns: classes)")
        print(format_histogram(hist, data.class_names))
        if server_dir is not None:
            print(f"held out for the coordinator: {len(data.labels) - len(rest)} in {server_dir}")
    return server_dir, dirs, hist


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fedhive partition",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, help=".npz, .csv or .jsonl file, or an image folder")
    p.add_argument("out", type=Path, help="folder that receives node-0 ... node-N-1")
    p.add_argument("--nodes", type=int, required=True, help="number of node folders")
    p.add_argument(
        "--scheme",
        choices=("iid", "dirichlet", "shards"),
        default="dirichlet",
        help="how labels are spread across nodes (default dirichlet)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration: smaller is more skewed (default 0.5)",
    )
    p.add_argument(
        "--shards-per-node",
        type=int,
        default=2,
        help="label-sorted shards per node, scheme shards (default 2)",
    )
    p.add_argument(
        "--holdout", type=float, default=0.0, help="share written to OUT/server (default 0.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    ns = p.parse_args(argv)
    try:
        data = load_labelled(ns.source)
        partition_dataset(
            data,
            ns.out,
            ns.nodes,
            ns.scheme,
            alpha=ns.alpha,
            shards_per_node=ns.shards_per_node,
            holdout=ns.holdout,
            seed=ns.seed,
        )
    except (FedhiveError, ValueError) as exc:
        print(f"fedhive partition: {exc}", file=sys.stderr)
        return 2
    return 0
