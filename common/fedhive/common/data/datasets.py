"""Labelled data sets on disk, in the formats nodes read, for ``fedhive partition`` and the tasks.

* ``npz``: a file with ``x`` (N x ...) and ``y`` (N integer labels). In a node folder:
  ``train.npz``; in the coordinator's held-out folder: ``test.npz``.
* image folder: one subfolder per class holding image files (``.png .jpg .jpeg .bmp .gif .webp``);
  the class index is the position of the subfolder's name in sorted order. Partitioning writes every
  class subfolder in every node folder (empty where a node has none) so indices agree everywhere.
* table: ``.csv`` (header with ``text`` and ``label`` columns) or ``.jsonl`` (one object a line with
  ``text`` and ``label``). In a node folder: ``train.csv``/``train.jsonl``; held out: ``test.*``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.data.partition import read_npz, write_npz
from fedhive.common.errors import TaskError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TABLE_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Labelled:
    """A data set to split: integer labels plus what is needed to write any subset back."""

    kind: str  # "npz" | "images" | "csv" | "jsonl"
    labels: np.ndarray
    class_names: list[str]
    x: np.ndarray | None = None
    files: list[Path] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def write(self, idx: np.ndarray, dest: Path, split: str = "train") -> None:
        """Write the subset ``idx`` into the folder ``dest`` as a node (or server) reads it."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.kind == "npz":
            assert self.x is not None
            write_npz(dest / f"{split}.npz", self.x[idx], self.labels[idx])
        elif self.kind == "images":
            for name in self.class_names:
                (dest / name).mkdir(exist_ok=True)
            for i in idx:
                src = self.files[int(i)]
                target = dest / self.class_names[int(self.labels[i])] / src.name
                _link_or_copy(src, target)
        else:
            write_table(dest / f"{split}.{self.kind}", [self.rows[int(i)] for i in idx])


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def image_files(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class names) of a one-subfolder-per-class image folder."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TaskError(f"{folder}: no class subfolders (expected one folder per class)")
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(k)
    return files, np.asarray(labels, dtype=np.int64), classes


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows with ``text`` and ``label`` from a .csv or .jsonl file."""
    if not path.is_file():
        raise TaskError(f"data file not found: {path}")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise TaskError(f"{path}: the header must name 'text' and 'label' columns")
            rows = [dict(r) for r in reader]
        elif path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}:{n}: not JSON: {exc}") from exc
                if not isinstance(row, dict) or "text" not in row or "label" not in row:
                    raise TaskError(f"{path}:{n}: each line needs 'text' and 'label'")
                rows.append(row)
        else:
            raise TaskError(f"{path}: expected a .csv or .jsonl file")
    return rows


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            writer = csv.DictWriter(f, fieldnames=["text", "label"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
    tmp.replace(path)


def find_split_file(folder: Path, split: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_labelled(path: Path) -> Labelled:
    """Open ``path`` (an .npz, .csv or .jsonl file, or an image folder) for partitioning."""
    path = Path(path)
    if path.is_dir():
        found = find_split_file(path, "train", (".npz", *TABLE_SUFFIXES))
        if found is None:
            files, labels, classes = image_files(path)
            return Labelled("images", labels, classes, files=files)
        path = found
    if path.suffix == ".npz":
        if not path.is_file():
            raise TaskError(f"data file not found: {path}")
        x, y = read_npz(path)
        y = y.astype(np.int64)
        names = [str(c) for c in range(int(y.max()) + 1 if len(y) else 0)]
        return Labelled("npz", y, names, x=x)
    if path.suffix in TABLE_SUFFIXES:
        rows = read_table(path)
        names = sorted({str(r["label"]) for r in rows}, key=_label_key)
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index[str(r["label"])] for r in rows], dtype=np.int64)
        return Labelled(path.suffix[1:], labels, names, rows=rows)
    raise TaskError(f"{path}: expected an .npz, .csv or .jsonl file or an image folder")


def _label_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)
