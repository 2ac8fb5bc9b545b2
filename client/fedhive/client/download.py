"""A round's global model, from the task stream into the node's live model.

The chunks are staged in CPU buffers and checked (order, sizes, finite values, digest) and only
then copied into the live tensors (CPU or GPU), so a broken download never corrupts the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from fedhive.common.errors import InvalidUpdateError, TaskError, TransportError
from fedhive.common.wire.chunks import Chunk, StreamChecker
from fedhive.common.wire.messages import TaskHeader, TaskTrailer
from fedhive.common.wire.tensors import DTYPES, TensorSpec, tensor_bytes


class ModelDownload:
    """Staging buffers for the node's exchanged tensors (allocated once, reused every round)."""

    def __init__(self, specs: Sequence[TensorSpec], state: Mapping[str, torch.Tensor]) -> None:
        self.specs = list(specs)
        self.state = state
        self._staging = [np.empty(s.nbytes, dtype=np.uint8) for s in self.specs]

    def receive(self, header: TaskHeader, stream: Iterator[object]) -> int:
        """Stage, check, then copy the round's model into the live tensors; the bytes received."""
        if list(header.tensors) != self.specs:
            raise TaskError(
                "the coordinator's model does not match this node's task model "
                f"({len(header.tensors)} vs {len(self.specs)} tensors; same --task on both?)"
            )
        checker = StreamChecker(self.specs, what=f"global model of round {header.round}")
        for msg in stream:
            if isinstance(msg, Chunk):
                checker.accept(msg)
                buf = self._staging[msg.tensor]
                buf[msg.offset : msg.offset + len(msg.data)] = np.frombuffer(msg.data, np.uint8)
            elif isinstance(msg, TaskTrailer):
                checker.finish(msg.digest)
                break
            else:
                raise InvalidUpdateError("unexpected message in the task stream")
        else:
            raise TransportError(f"task stream for round {header.round} ended without a trailer")
        with torch.no_grad():
            for spec, buf in zip(self.specs, self._staging, strict=True):
                target = self.state[spec.name]
                if target.device.type == "cpu" and target.is_contiguous():
                    # a plain memcpy: torch's copy_ spins up its thread pool for every tensor
                    np.copyto(np.frombuffer(tensor_bytes(target), np.uint8), buf)
                else:
                    target.copy_(tensor_view(buf, spec), non_blocking=False)
        return checker.received


def tensor_view(buf: np.ndarray, spec: TensorSpec) -> torch.Tensor:
    """A CPU tensor over a staging buffer's bytes, as ``spec`` (bf16 included)."""
    t = torch.from_numpy(buf.view(DTYPES[spec.dtype].storage))
    if spec.dtype == "bfloat16":
        t = t.view(torch.int16).view(torch.bfloat16)
    return t.reshape(spec.shape)
