"""The global model served from memory or from its checkpoint: same chunks, same digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.common.data.safetensors_io import write_safetensors
from fedhive.common.errors import FedhiveError
from fedhive.common.wire import serde
from fedhive.common.wire.chunks import Chunk
from fedhive.common.wire.tensors import TensorSpec, raw_view
from fedhive.server.broadcast import EncodedModel, FileModel

SPECS = [
    TensorSpec("a", "float32", (1000,)),
    TensorSpec("empty", "float32", (0,)),
    TensorSpec("b", "bfloat16", (3, 700)),
]


def model() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, s.nbytes, dtype=np.uint8) for s in SPECS]


def test_file_model_serves_the_same_chunks_and_digest_as_the_encoded_model(tmp_path: Path) -> None:
    # Prepare
    arrays = model()
    path = tmp_path / "round-0001.safetensors"
    write_safetensors(path, SPECS, [raw_view(a) for a in arrays])
    # Execute
    in_memory = EncodedModel.of(SPECS, arrays, 1024)
    fresh = FileModel.of(path, SPECS, arrays, 1024)
    loaded = FileModel.load(path, SPECS, 1024)
    # Assert: byte for byte the same messages, digest and decoded tensors
    assert list(fresh.chunks()) == in_memory.chunks() == list(loaded.chunks())
    assert fresh.digest == in_memory.digest == loaded.digest
    for got in (in_memory.arrays(), loaded.arrays()):
        assert [a.tobytes() for a in got] == [a.tobytes() for a in arrays]
    first = serde.task_message_from_bytes(next(iter(loaded.chunks())))
    assert isinstance(first, Chunk) and first.tensor == 0 and len(first.data) == 1024


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    # Prepare: tensor "b" has another shape in the file
    other = [*SPECS[:2], TensorSpec("b", "bfloat16", (700, 3))]
    path = tmp_path / "m.safetensors"
    write_safetensors(path, other, [raw_view(a) for a in model()])
    # Execute / Assert
    with pytest.raises(FedhiveError, match="tensor 'b' differs"):
        FileModel.load(path, SPECS, 1024)


def test_a_truncated_checkpoint_fails_clearly(tmp_path: Path) -> None:
    # Prepare: a valid checkpoint, then cut short after it was opened
    path = tmp_path / "m.safetensors"
    write_safetensors(path, SPECS, [raw_view(a) for a in model()])
    served = FileModel.load(path, SPECS, 1024)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    # Execute / Assert
    with pytest.raises(FedhiveError, match="truncated checkpoint"):
        list(served.chunks())
