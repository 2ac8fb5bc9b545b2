"""Which device a node trains on, and what its log says about it."""

from __future__ import annotations

import torch

from fedhive.common.errors import TaskError


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise TaskError(f"unknown device {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TaskError(f"device {name!r} requested but CUDA is not available on this node")
    return name


def describe_device(name: str) -> str:
    """The device and, for a GPU, its model and memory (what a log reader needs to know)."""
    dev = torch.device(name)
    if dev.type != "cuda":
        return name
    props = torch.cuda.get_device_properties(dev)
    return f"{name}: {props.name}, {props.total_memory / 2**30:.0f} GiB"


def gpu_peak(device: str) -> str:
    """The peak GPU memory allocated so far by this process, for the round's log line."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB"
