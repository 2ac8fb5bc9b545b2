"""CNN image classification on each node's private images (no torchvision).

Data (``data_dir``): a folder with one subfolder per class holding image files (read with Pillow,
converted to ``channels`` and resized to ``image_size`` squared), or a ``train.npz`` (node) /
``test.npz`` (coordinator) with ``x`` (N x H x W, or N x H x W x C; uint8 0-255 or float 0-1) and
``y`` (integer labels). ``data_dir`` may also name the .npz file itself.

Task args (``task_args``; identical on coordinator and nodes, they fix the model's shape):
``image_size`` (32), ``channels`` (1 or 3; default 1), ``num_classes`` (10) or ``classes``
(comma-separated subfolder names, in label order), ``width`` (16), ``depth`` (2 conv blocks),
``val_fraction`` (0.2), ``model`` (``package.module:factory`` replacing the built-in CNN; called
with whichever of ``in_channels``, ``num_classes``, ``image_size`` it accepts).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedhive.common.api.task import Scalar, TaskContext
from fedhive.common.data.datasets import find_split_file, image_files
from fedhive.common.data.partition import read_npz
from fedhive.common.errors import TaskError
from fedhive.common.tasks.base import ClassificationTask, labels_tensor


class CompactCNN(nn.Module):
    """``depth`` blocks of (conv 3x3, ReLU, conv 3x3, ReLU, max-pool 2), width doubling per block,
    then a two-layer classifier on the flattened features. No normalisation buffers."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        depth: int = 2,
        image_size: int = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if image_size % 2**depth:
            raise TaskError(f"image_size {image_size} must be divisible by 2**depth = {2**depth}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = image_size // 2**depth
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def import_factory(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TaskError(f"images task: cannot import model factory {path!r}: {exc}") from exc
    if not callable(factory):
        raise TaskError(f"images task: model factory {path!r} is not callable")
    return factory


def call_with_accepted(factory: Callable[..., nn.Module], **kwargs: object) -> nn.Module:
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = kwargs
    else:
        accepted = {k: v for k, v in kwargs.items() if k in params}
    model = factory(**accepted)
    if not isinstance(model, nn.Module):
        raise TaskError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def to_images(x: np.ndarray, channels: int, size: int, where: str) -> torch.Tensor:
    """N x H x W (x C) array -> float32 N x C x size x size in [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TaskError(f"{where}: x must be N x H x W or N x H x W x C (C = 1 or 3)")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    t = t.float() / 255.0 if x.dtype == np.uint8 else t.float()
    if t.shape[1] != channels:
        t = t.mean(1, keepdim=True) if channels == 1 else t.expand(-1, 3, -1, -1)
    if t.shape[-2:] != (size, size) and len(t):
        t = nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.contiguous()


def read_image_folder(
    folder: Path, channels: int, size: int, classes: list[str] | None
) -> tuple[torch.Tensor, np.ndarray]:
    from PIL import Image

    files, labels, found = image_files(folder)
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise TaskError(f"images task: {folder} has class folders not in 'classes': {unknown}")
        remap = np.asarray([classes.index(name) for name in found], dtype=np.int64)
        labels = remap[labels] if len(labels) else labels
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                arr = np.asarray(img.convert(mode).resize((size, size)), dtype=np.uint8)
        except OSError as exc:
            raise TaskError(f"images task: cannot read image {f}: {exc}") from exc
        out[i] = arr.reshape(size, size, channels)
    return to_images(out, channels, size, str(folder)), labels


class ImageTask(ClassificationTask):
    name = "images"
    train_defaults: ClassVar[Mapping[str, Scalar]] = {
        "epochs": 1,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 3e-3,
    }
    known_args = frozenset(
        {"image_size", "channels", "classes", "num_classes", "width", "depth", "model"}
    )

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        self.size = int(self.arg("image_size", 32))
        self.channels = int(self.arg("channels", 1))
        if self.channels not in (1, 3):
            raise TaskError(f"images task: channels must be 1 or 3, got {self.channels}")
        classes = str(self.arg("classes", ""))
        self.classes = [c.strip() for c in classes.split(",") if c.strip()] or None
        self.num_classes = len(self.classes) if self.classes else int(self.arg("num_classes", 10))
        self.width = int(self.arg("width", 16))
        self.depth = int(self.arg("depth", 2))
        self.factory = str(self.arg("model", ""))
        self.load_data()

    def read(self, path: Path, split: str) -> list[torch.Tensor]:
        if path.is_dir():
            found = find_split_file(path, split, (".npz",))
            if found is None:
                x, y = read_image_folder(path, self.channels, self.size, self.classes)
                return [x, labels_tensor(y, self.num_classes, f"images task: {path}")]
            path = found
        if not path.is_file():
            raise TaskError(f"images task: data not found: {path}")
        x_arr, y_arr = read_npz(path)
        if len(x_arr) != len(y_arr):
            raise TaskError(f"images task: {path}: x and y differ in length")
        where = f"images task: {path}"
        return [
            to_images(x_arr, self.channels, self.size, where),
            labels_tensor(y_arr, self.num_classes, where),
        ]

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.ctx.seed)
        if self.factory:
            return call_with_accepted(
                import_factory(self.factory),
                in_channels=self.channels,
                num_classes=self.num_classes,
                image_size=self.size,
            )
        return CompactCNN(self.channels, self.num_classes, self.width, self.depth, self.size)


def make_task(ctx: TaskContext) -> ImageTask:
    return ImageTask(ctx)


def prepare_simulation(
    root: Path, nodes: int, alpha: float | None, seed: int, shards_per_node: int | None = None
) -> tuple[Path, list[Path]]:
    """The bundled 8x8 digits as an image task (upsampled by the task to ``image_size``)."""
    from fedhive.common.tasks.digits import prepare_simulation as digits_prepare

    return digits_prepare(root, nodes, alpha, seed, shards_per_node)
