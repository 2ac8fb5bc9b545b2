"""The current global model as the round engine serves it, and the open round's broadcast.

:class:`GlobalModel` holds the model the nodes pull: its encoded chunks in memory when it fits
``broadcast_memory_bytes``, else read from its committed checkpoint on each pull (see
:mod:`fedhive.server.broadcast`). It encodes a round's task (header, the model's chunks,
trailer) once and reuses it for every node and for a retry with the same config, and when a
round commits it frees the old model's chunks before encoding the new one (2x the model at
most). No grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.wire import serde
from fedhive.common.wire.messages import TaskHeader, TaskKind, TaskTrailer
from fedhive.common.wire.tensors import TensorSpec, payload_bytes
from fedhive.server.broadcast import (
    DEFAULT_BROADCAST_MEMORY,
    Broadcast,
    EncodedModel,
    FileModel,
    ModelSource,
)


def check_initial(specs: Sequence[TensorSpec], initial: Sequence[np.ndarray]) -> None:
    """Refuse an initial model that does not match ``specs`` (ValueError)."""
    if len(initial) != len(specs):
        raise ValueError("initial model and specs differ in length")
    for spec, arr in zip(specs, initial, strict=True):
        if arr.nbytes != spec.nbytes:
            raise ValueError(
                f"initial tensor {spec.name!r} has {arr.nbytes} bytes, not {spec.nbytes}"
            )


class GlobalModel:
    def __init__(
        self,
        config: ServerConfig,
        specs: Sequence[TensorSpec],
        run_id: str,
        initial: Sequence[np.ndarray],
        resumed_from: Path | None,
    ) -> None:
        """``initial``: the model's flat arrays; ``resumed_from``: the checkpoint a resumed run
        serves (a new run's model is adopted once its round 0 is written)."""
        self.config = config
        self.specs = list(specs)
        self.run_id = run_id
        self.nbytes = payload_bytes(self.specs)
        check_initial(self.specs, initial)
        limit = config.broadcast_memory_bytes
        self.in_memory = self.nbytes <= (DEFAULT_BROADCAST_MEMORY if limit is None else limit)
        self.source: ModelSource | None = None
        if self.in_memory:
            self.source = EncodedModel.of(self.specs, initial, config.chunk_size)
        elif resumed_from is not None:  # served from the checkpoint it was resumed from
            self.source = FileModel.load(resumed_from, self.specs, config.chunk_size)
        self._broadcast: Broadcast | None = None
        self._key: tuple[int, TaskKind, dict[str, Any]] | None = None

    def adopt(self, path: Path, arrays: Sequence[np.ndarray]) -> None:
        """The model committed as ``path`` (``arrays``: its values) is now the one served."""
        self._broadcast, self._key, self.source = None, None, None  # free the old one first
        if self.in_memory:
            self.source = EncodedModel.of(self.specs, arrays, self.config.chunk_size)
        else:
            self.source = FileModel.of(path, self.specs, arrays, self.config.chunk_size)

    def arrays(self) -> list[np.ndarray]:
        """A copy of the current global model (raw bytes per tensor)."""
        assert self.source is not None
        return self.source.arrays()

    def header_bytes(self, kind: TaskKind, number: int, **extra: Any) -> bytes:
        """A task without a model (WAIT, FINISH)."""
        return serde.task_message_to_bytes(TaskHeader(self.run_id, number, kind, **extra))

    def broadcast(self, number: int, kind: TaskKind, config: Mapping[str, Any]) -> Broadcast:
        """Round ``number``'s task with ``config``, encoded once (reused while they stay)."""
        key = (number, kind, dict(config))
        if self._broadcast is not None and self._key == key:
            return self._broadcast
        self._broadcast, self._key = None, None
        assert self.source is not None
        header = TaskHeader(
            run_id=self.run_id,
            round=number,
            kind=kind,
            config=dict(config),
            tensors=tuple(self.specs),
            payload_bytes=self.nbytes,
            chunk_size=self.config.chunk_size,
        )
        self._broadcast = Broadcast(
            serde.task_message_to_bytes(header),
            self.source,
            serde.task_message_to_bytes(TaskTrailer(self.source.digest)),
            self.nbytes,
        )
        self._key = key
        return self._broadcast
