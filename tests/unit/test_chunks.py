"""fedhive.common.wire.chunks: cutting payloads into chunks and checking a chunk stream."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import InvalidUpdateError, LimitExceededError
from fedhive.common.wire.chunks import Chunk, StreamChecker, iter_chunks, payload_digest
from fedhive.common.wire.tensors import DTYPES, TensorSpec

# A small model: 4 float32 (16 bytes), then 3 float16 (6 bytes).
SPECS = [TensorSpec("conv.weight", "float32", (2, 2)), TensorSpec("fc.bias", "float16", (3,))]
W = np.array([1.0, -2.0, 0.5, 3.0], dtype="<f4").tobytes()
B = np.array([0.25, -1.0, 8.0], dtype="<f2").tobytes()
DIGEST = xxhash.xxh3_128(W + B).digest()


def checker(**kwargs) -> StreamChecker:
    return StreamChecker(SPECS, **kwargs)


def feed(check: StreamChecker, chunks) -> None:
    for chunk in chunks:
        check.accept(chunk)


# ----------------------------------------------------------------------------- iter_chunks


@given(
    st.lists(st.binary(max_size=64), max_size=6),
    st.integers(1, 70),
)
def test_iter_chunks_cuts_each_buffer_in_order_and_reassembles(buffers, chunk_size):
    chunks = list(iter_chunks(buffers, chunk_size))

    rebuilt = [bytearray() for _ in buffers]
    previous = (-1, 0)
    for c in chunks:
        assert 0 < len(c.data) <= chunk_size
        assert (c.tensor, c.offset) > previous
        assert c.offset == len(rebuilt[c.tensor])
        rebuilt[c.tensor] += c.data
        previous = (c.tensor, c.offset)
    assert [bytes(r) for r in rebuilt] == list(buffers)
    assert len(chunks) == sum(-(-len(b) // chunk_size) for b in buffers)


def test_iter_chunks_never_crosses_a_tensor_boundary():
    chunks = list(iter_chunks([b"abc", b"", b"defgh"], 4))

    assert [(c.tensor, c.offset, bytes(c.data)) for c in chunks] == [
        (0, 0, b"abc"),
        (2, 0, b"defg"),
        (2, 4, b"h"),
    ]


def test_iter_chunks_accepts_typed_memoryviews_as_bytes():
    arr = np.arange(5, dtype="<i4")

    chunks = list(iter_chunks([memoryview(arr)], 8))

    assert b"".join(bytes(c.data) for c in chunks) == arr.tobytes()
    assert [len(c.data) for c in chunks] == [8, 8, 4]


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_iter_chunks_refuses_a_non_positive_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_chunks([b"abc"], chunk_size))


# ----------------------------------------------------------------------------- stream checker


@st.composite
def models(draw):
    """Specs of several dtypes (some tensors empty) and finite raw bytes for each."""
    specs, buffers = [], []
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for i in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["float32", "float16", "bfloat16", "float64", "int8", "bool"]))
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        spec = TensorSpec(f"t{i}", name, shape)
        if name == "bool":
            raw = rng.integers(0, 2, spec.numel, dtype=np.uint8).tobytes()
        elif name == "bfloat16":  # finite bf16 words: exponent never all ones
            words = rng.integers(0, 0x7F00, spec.numel, dtype=np.uint16)
            words |= rng.integers(0, 2, spec.numel, dtype=np.uint16) << 15
            raw = words.tobytes()
        elif DTYPES[name].is_float:
            raw = rng.standard_normal(spec.numel).astype(DTYPES[name].storage).tobytes()
        else:
            raw = rng.integers(-128, 128, spec.numel, dtype=np.int8).tobytes()
        specs.append(spec)
        buffers.append(raw)
    return specs, buffers


@given(models(), st.integers(1, 12))
def test_stream_checker_accepts_every_stream_iter_chunks_produces(model, elements_per_chunk):
    specs, buffers = model
    chunk_size = 8 * elements_per_chunk  # a multiple of every itemsize
    check = StreamChecker(specs, max_chunk_size=chunk_size)
    rebuilt = [bytearray(s.nbytes) for s in specs]

    for chunk in iter_chunks(buffers, chunk_size):
        spec = check.accept(chunk)
        assert spec is specs[chunk.tensor]
        rebuilt[chunk.tensor][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
    check.finish(payload_digest(buffers))

    assert [bytes(r) for r in rebuilt] == buffers
    assert check.received == check.total == sum(len(b) for b in buffers)


def test_stream_checker_accepts_a_stream_cut_at_element_boundaries():
    check = checker()

    feed(check, [Chunk(0, 0, W[:4]), Chunk(0, 4, W[4:]), Chunk(1, 0, B[:2]), Chunk(1, 2, B[2:])])
    check.finish(DIGEST)

    assert check.received == 22


def test_check_does_not_advance_the_stream():
    check = checker()
    first = Chunk(0, 0, W)

    check.check(first)
    check.check(first)
    check.advance(first)

    with pytest.raises(InvalidUpdateError, match="out-of-order"):
        check.check(first)


def test_empty_tensors_are_skipped_wherever_they_are():
    specs = [
        TensorSpec("e0", "float32", (0,)),
        TensorSpec("w", "float32", (1,)),
        TensorSpec("e1", "int8", (3, 0)),
        TensorSpec("b", "int8", (2,)),
        TensorSpec("e2", "bool", (0,)),
    ]
    buffers = [b"", W[:4], b"", b"\x01\x02", b""]
    check = StreamChecker(specs)

    feed(check, iter_chunks(buffers, 64))
    check.finish(payload_digest(buffers))

    assert check.received == 6


def test_a_chunk_for_an_empty_tensor_is_refused():
    specs = [
        TensorSpec("w", "float32", (1,)),
        TensorSpec("empty", "float32", (0,)),
        TensorSpec("b", "int8", (2,)),
    ]
    check = StreamChecker(specs)
    check.accept(Chunk(0, 0, W[:4]))

    with pytest.raises(InvalidUpdateError, match=r"out-of-order.*expected tensor 2 'b' offset 0"):
        check.check(Chunk(1, 0, W[:4]))
    check.accept(Chunk(2, 0, b"\x01\x02"))
    with pytest.raises(LimitExceededError, match="after the last tensor"):
        check.check(Chunk(1, 0, W[:4]))


def test_a_model_of_only_empty_tensors_expects_no_chunk():
    check = StreamChecker([TensorSpec("e", "float32", (0, 3))])

    check.finish(xxhash.xxh3_128(b"").digest())

    with pytest.raises(LimitExceededError, match="after the last tensor"):
        check.check(Chunk(0, 0, W[:4]))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "chunk",
    [
        Chunk(1, 0, B),  # skips tensor 0
        Chunk(0, 4, W[4:]),  # skips the first bytes
        Chunk(0, 0, W[:4]),  # replays the first chunk (see the prefix below)
    ],
    ids=["wrong-tensor", "skipped-bytes", "replay"],
)
def test_out_of_order_chunk_is_refused_naming_the_expected_tensor(chunk):
    check = checker()
    if chunk.tensor == 0 and chunk.offset == 0:
        check.accept(Chunk(0, 0, W[:4]))

    with pytest.raises(InvalidUpdateError, match="out-of-order") as excinfo:
        check.check(chunk)

    assert "'conv.weight'" in str(excinfo.value)
    assert f"tensor {chunk.tensor} offset {chunk.offset}" in str(excinfo.value)


def test_chunk_overflowing_its_tensor_is_refused_naming_it():
    check = checker()

    with pytest.raises(LimitExceededError, match=r"'conv\.weight' overflows its 16 bytes"):
        check.check(Chunk(0, 0, W + B[:4]))


def test_chunk_overflowing_the_rest_of_a_tensor_is_refused():
    check = checker()
    check.accept(Chunk(0, 0, W[:8]))

    with pytest.raises(LimitExceededError, match=r"'conv\.weight' overflows"):
        check.check(Chunk(0, 8, W[8:] + W[:4]))


@pytest.mark.parametrize(
    ("prefix", "chunk", "dtype_name", "name"),
    [
        ([], Chunk(0, 0, W[:6]), "float32", "conv.weight"),
        ([Chunk(0, 0, W)], Chunk(1, 0, B[:3]), "float16", "fc.bias"),
    ],
)
def test_chunk_splitting_an_element_is_refused(prefix, chunk, dtype_name, name):
    check = checker()
    feed(check, prefix)

    with pytest.raises(InvalidUpdateError, match=f"'{name}' splits a {dtype_name} element"):
        check.check(chunk)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_is_refused_naming_the_tensor(bad):
    values = np.array([0.25, bad, 8.0], dtype="<f2").tobytes()
    check = checker()
    check.accept(Chunk(0, 0, W))

    with pytest.raises(InvalidUpdateError, match=r"'fc\.bias' holds non-finite values"):
        check.check(Chunk(1, 0, values))


def test_non_finite_values_pass_when_not_required_finite():
    values = np.array([np.nan, np.inf, -np.inf], dtype="<f2").tobytes()
    check = checker(require_finite=False)

    feed(check, [Chunk(0, 0, W), Chunk(1, 0, values)])
    check.finish(xxhash.xxh3_128(W + values).digest())

    assert check.received == 22


def test_oversized_chunk_is_refused():
    check = checker(max_chunk_size=8)

    with pytest.raises(LimitExceededError, match="chunk of 16 bytes exceeds the limit of 8"):
        check.check(Chunk(0, 0, W))


def test_empty_chunk_is_refused_naming_the_tensor():
    check = checker()

    with pytest.raises(InvalidUpdateError, match=r"empty chunk for tensor 'conv\.weight'"):
        check.check(Chunk(0, 0, b""))


def test_chunk_after_the_end_is_refused():
    check = checker()
    feed(check, [Chunk(0, 0, W), Chunk(1, 0, B)])

    with pytest.raises(LimitExceededError, match=r"after the last tensor \(payload is 22 bytes\)"):
        check.check(Chunk(2, 0, B))


def test_truncated_stream_is_refused_at_finish():
    check = checker()
    feed(check, [Chunk(0, 0, W), Chunk(1, 0, B[:2])])

    with pytest.raises(InvalidUpdateError, match="truncated stream, 18 of 22 bytes"):
        check.finish(xxhash.xxh3_128(W + B[:2]).digest())


def test_empty_stream_is_truncated():
    with pytest.raises(InvalidUpdateError, match="truncated stream, 0 of 22 bytes"):
        checker().finish(DIGEST)


@pytest.mark.parametrize(
    "digest",
    [bytes(16), DIGEST[:-1] + bytes([DIGEST[-1] ^ 1]), DIGEST[:8], b"", DIGEST + b"\0"],
    ids=["zeros", "one-bit", "short", "empty", "long"],
)
def test_wrong_digest_is_refused(digest):
    check = checker()
    feed(check, [Chunk(0, 0, W), Chunk(1, 0, B)])

    with pytest.raises(InvalidUpdateError, match="digest mismatch"):
        check.finish(digest)


def test_right_digest_is_accepted_as_any_bytes_like():
    check = checker()
    feed(check, [Chunk(0, 0, W), Chunk(1, 0, B)])

    check.finish(memoryview(bytearray(DIGEST)))

    assert payload_digest([W, B]) == DIGEST


def test_payload_larger_than_the_limit_is_refused_up_front():
    with pytest.raises(LimitExceededError, match="update of 22 bytes exceeds the limit of 21"):
        checker(max_payload_bytes=21)

    assert checker(max_payload_bytes=22).total == 22


def test_messages_name_what_is_checked():
    check = checker(what="task")

    with pytest.raises(InvalidUpdateError, match=r"^task: out-of-order"):
        check.check(Chunk(1, 0, B))
    with pytest.raises(LimitExceededError, match=r"^task of 22 bytes exceeds"):
        checker(what="task", max_payload_bytes=1)
