"""fedhive.common.data.safetensors_io against the official safetensors library."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedhive.common.data.safetensors_io import SafetensorsFile, write_safetensors
from fedhive.common.errors import FedhiveError
from fedhive.common.wire.tensors import DTYPES, spec_of, tensor_bytes


def model_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(3, 1, 5, generator=gen),
        "conv.bias": torch.randn(5, generator=gen).to(torch.bfloat16),
        "fc.weight": torch.randn(4, 2, generator=gen).to(torch.float16),
        "fc.bias": torch.randn(2, generator=gen).double(),
        "bn.num_batches_tracked": torch.tensor(12345678901, dtype=torch.int64),
        "ids": torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32),
        "small": torch.tensor([-32768, 7], dtype=torch.int16),
        "bytes": torch.tensor([-128, 127], dtype=torch.int8),
        "pixels": torch.tensor([0, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }


def write_model(path, tensors, metadata=None) -> int:
    specs = [spec_of(name, t) for name, t in tensors.items()]
    return write_safetensors(path, specs, [tensor_bytes(t) for t in tensors.values()], metadata)


def read_with_fedhive(path) -> tuple[dict[str, tuple], dict[str, str]]:
    f = SafetensorsFile(path)
    try:
        out = {
            spec.name: (spec.dtype, spec.shape, bytes(f.buffer(i)))
            for i, spec in enumerate(f.specs)
        }
        return out, dict(f.metadata)
    finally:
        f.close()


def test_every_dtype_is_covered_by_the_model():
    assert {spec_of(n, t).dtype for n, t in model_tensors().items()} == set(DTYPES)


def test_written_file_reads_back_bit_exact_with_the_official_library(tmp_path):
    tensors = model_tensors()
    path = tmp_path / "model.safetensors"

    size = write_model(path, tensors, {"round": "3"})
    loaded = load_file(path)

    assert size == path.stat().st_size
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype, name
        assert loaded[name].shape == t.shape, name
        assert bytes(tensor_bytes(loaded[name])) == bytes(tensor_bytes(t)), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"round": "3"}


def test_written_file_reads_back_bit_exact_with_fedhive(tmp_path):
    tensors = model_tensors()
    path = tmp_path / "model.safetensors"
    write_model(path, tensors, {"round": "3", "run": "abc"})

    read, metadata = read_with_fedhive(path)

    assert list(read) == list(tensors)  # file order is write order
    assert metadata == {"round": "3", "run": "abc"}
    for name, t in tensors.items():
        spec = spec_of(name, t)
        assert read[name] == (spec.dtype, spec.shape, bytes(tensor_bytes(t))), name


def test_file_of_the_official_library_reads_bit_exact_with_fedhive(tmp_path):
    tensors = model_tensors(seed=1)
    path = tmp_path / "official.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})

    read, metadata = read_with_fedhive(path)

    assert metadata == {"format": "pt"}
    assert set(read) == set(tensors)
    for name, t in tensors.items():
        spec = spec_of(name, t)
        assert read[name] == (spec.dtype, spec.shape, bytes(tensor_bytes(t))), name


def test_header_is_padded_to_eight_bytes(tmp_path):
    path = tmp_path / "m.safetensors"
    write_model(path, {"w": torch.ones(3)})

    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")

    assert header_len % 8 == 0
    assert len(raw) == 8 + header_len + 12


def test_write_leaves_only_the_final_file(tmp_path):
    path = tmp_path / "sub" / "model.safetensors"

    write_model(path, model_tensors())

    assert os.listdir(tmp_path / "sub") == ["model.safetensors"]


def test_rewrite_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_model(path, model_tensors(seed=0))
    newer = model_tensors(seed=1)

    write_model(path, newer)

    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert torch.equal(load_file(path)["conv.weight"], newer["conv.weight"])


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_model(path, {"w": torch.ones(2)})
    before = path.read_bytes()
    specs = [spec_of("w", torch.ones(2))]

    with pytest.raises(ValueError, match="'w': 7 bytes, expected 8"):
        write_safetensors(path, specs, [b"\0" * 7])

    assert path.read_bytes() == before


@pytest.mark.parametrize("buffers", [[b"\0" * 7], [b"\0" * 8, b"\0" * 8]], ids=["short", "extra"])
def test_failed_write_leaves_no_temp_file(tmp_path, buffers):
    path = tmp_path / "model.safetensors"
    specs = [spec_of("w", torch.ones(2))]

    with pytest.raises(ValueError):
        write_safetensors(path, specs, buffers)

    assert os.listdir(tmp_path) == []


def test_empty_model_round_trips(tmp_path):
    path = tmp_path / "empty.safetensors"

    write_safetensors(path, [], [])

    assert load_file(path) == {}
    assert read_with_fedhive(path) == ({}, {})


def test_buffers_are_views_of_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    w = np.arange(6, dtype="<f4")
    write_model(path, {"w": torch.from_numpy(w.copy()), "e": torch.zeros(0)})
    f = SafetensorsFile(path)

    views = f.buffers()
    got = [bytes(v) for v in views]
    del views

    f.close()
    assert got == [w.tobytes(), b""]


@pytest.mark.parametrize("content", [b"", b"abc", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops"])
def test_not_a_safetensors_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)

    with pytest.raises(FedhiveError, match="not a safetensors file"):
        SafetensorsFile(path)


def test_unsupported_dtype_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"z": torch.zeros(2, dtype=torch.complex64)}, path)

    with pytest.raises(FedhiveError, match="unsupported dtype C64 for 'z'"):
        SafetensorsFile(path)


def test_the_hasher_sees_exactly_the_bytes_of_the_file(tmp_path) -> None:
    # Prepare
    tensors = model_tensors(3)
    specs = [spec_of(name, t) for name, t in tensors.items()]
    digest = hashlib.sha256()
    # Execute
    write_safetensors(
        tmp_path / "m.safetensors",
        specs,
        [tensor_bytes(t) for t in tensors.values()],
        {"round": "7"},
        hasher=digest,
    )
    # Assert
    assert (
        digest.hexdigest() == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    )


def rss_file_kb() -> int:
    with open("/proc/self/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_release_drops_read_pages_from_rss_and_reads_stay_right(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a 32 MiB tensor, read through once (its pages become resident)
    values = np.arange(8 << 20, dtype=np.float32)
    spec = spec_of("w", torch.from_numpy(values))
    path = tmp_path / "m.safetensors"
    write_safetensors(path, [spec], [values.data.cast("B")], {})
    f = SafetensorsFile(path)
    view = np.frombuffer(f.buffer(0), dtype=np.float32)
    total = float(view.sum(dtype=np.float64))
    before = rss_file_kb()

    # Execute
    f.release(0, 0, values.nbytes)
    after = rss_file_kb()

    # Assert: the 32 MiB left the process (most of it: RSS is counted loosely); same data again
    assert before - after > 0.5 * values.nbytes / 1024, (before, after)
    assert float(view.sum(dtype=np.float64)) == total
    del view
    f.close()
