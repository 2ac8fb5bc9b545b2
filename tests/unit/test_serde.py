"""fedhive.common.wire.serde: protobuf <-> domain types, and the hand-written chunk fast path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.wire import serde
from fedhive.common.wire.chunks import Chunk
from fedhive.common.wire.messages import (
    EvaluationReport,
    JoinReply,
    JoinRequest,
    NodeAuth,
    TaskHeader,
    TaskKind,
    TaskTrailer,
    UpdateHeader,
    UpdateTrailer,
)
from fedhive.common.wire.tensors import DTYPES, MAX_DIMS, TensorSpec
from fedhive.proto.v1 import coordinator_pb2 as pb

U32 = 2**32 - 1
U64 = 2**64 - 1

# ----------------------------------------------------------------------------- strategies

texts = st.text(max_size=12)
u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
finite = st.floats(allow_nan=False, allow_infinity=False)
auths = st.builds(NodeAuth, node_id=texts, token=st.binary(max_size=32))
specs = st.builds(
    TensorSpec,
    name=texts,
    dtype=st.sampled_from(list(DTYPES)),
    shape=st.lists(u64, max_size=MAX_DIMS).map(tuple),
)
config_values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), texts
)
configs = st.dictionaries(texts, config_values, max_size=5)
metrics = st.dictionaries(texts, st.floats(-serde.MAX_METRIC_ABS, serde.MAX_METRIC_ABS), max_size=5)
chunks = st.builds(Chunk, tensor=u32, offset=u64, data=st.binary(max_size=300))
task_headers = st.builds(
    TaskHeader,
    run_id=texts,
    round=u64,
    kind=st.sampled_from(TaskKind),
    config=configs,
    tensors=st.lists(specs, max_size=4).map(tuple),
    payload_bytes=u64,
    chunk_size=u32,
    retry_after_s=finite,
)
task_trailers = st.builds(TaskTrailer, digest=st.binary(max_size=32))
update_headers = st.builds(
    UpdateHeader,
    auth=auths,
    round=u64,
    num_examples=u64,
    tensors=st.lists(specs, max_size=4).map(tuple),
)
update_trailers = st.builds(
    UpdateTrailer,
    digest=st.binary(max_size=32),
    metrics=metrics,
    eval_metrics=metrics,
    eval_examples=u64,
    dp_epsilon=st.none() | st.floats(min_value=0, max_value=1e6),
)


def wire(msg):
    """Through the wire: serialize the protobuf message and parse it back."""
    return type(msg).FromString(msg.SerializeToString())


def as_tuple(m):
    """Comparable form of a decoded message (a chunk's data may be bytes or a memoryview)."""
    if isinstance(m, Chunk):
        return ("chunk", m.tensor, m.offset, bytes(m.data))
    return m


# ----------------------------------------------------------------------------- round trips


@given(auths)
def test_auth_round_trip(auth):
    assert serde.auth_from_proto(wire(serde.auth_to_proto(auth))) == auth


@given(specs)
def test_tensor_spec_round_trip(spec):
    assert serde.tensor_spec_from_proto(wire(serde.tensor_spec_to_proto(spec))) == spec


@given(configs)
def test_config_round_trip_keeps_values_and_their_types(config):
    msg = wire(pb.TaskHeader(config=serde.config_to_proto(config)))

    back = serde.config_from_proto(msg.config)

    assert back == config
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in config.items()}


@given(chunks)
def test_chunk_round_trip(chunk):
    back = serde.chunk_from_proto(wire(serde.chunk_to_proto(chunk)))

    assert as_tuple(back) == as_tuple(chunk)


@given(st.builds(JoinRequest, name=texts, device=texts, num_examples=u64, protocol_version=u32))
def test_join_request_round_trip(req):
    assert serde.join_request_from_proto(wire(serde.join_request_to_proto(req))) == req


@given(st.builds(JoinReply, auth=auths, run_id=texts, heartbeat_interval_s=finite))
def test_join_reply_round_trip(rep):
    assert serde.join_reply_from_proto(wire(serde.join_reply_to_proto(rep))) == rep


@given(task_headers)
def test_task_header_round_trip(header):
    assert serde.task_header_from_proto(wire(serde.task_header_to_proto(header))) == header


@given(update_headers)
def test_update_header_round_trip(header):
    assert serde.update_header_from_proto(wire(serde.update_header_to_proto(header))) == header


@given(update_trailers)
def test_update_trailer_round_trip(trailer):
    assert serde.update_trailer_from_proto(wire(serde.update_trailer_to_proto(trailer))) == trailer


@given(st.builds(EvaluationReport, auth=auths, round=u64, num_examples=u64, metrics=metrics))
def test_evaluation_report_round_trip(report):
    back = serde.evaluation_report_from_proto(wire(serde.evaluation_report_to_proto(report)))

    assert back == report


@given(st.one_of(task_headers, chunks, task_trailers))
def test_task_message_round_trip_through_proto_and_bytes(m):
    via_proto = serde.task_message_from_proto(wire(serde.task_message_to_proto(m)))
    via_bytes = serde.task_message_from_bytes(serde.task_message_to_bytes(m))

    assert as_tuple(via_proto) == as_tuple(m)
    assert as_tuple(via_bytes) == as_tuple(m)


@given(st.one_of(update_headers, chunks, update_trailers))
def test_update_message_round_trip_through_proto_and_bytes(m):
    data = serde.update_message_to_proto(m).SerializeToString()

    via_proto = serde.update_message_from_proto(pb.UpdateMessage.FromString(data))
    via_bytes = serde.update_message_from_bytes(data)

    assert as_tuple(via_proto) == as_tuple(m)
    assert as_tuple(via_bytes) == as_tuple(m)


def test_task_header_kind_travels_as_the_proto_enum():
    header = TaskHeader(run_id="r", round=3, kind=TaskKind.EVALUATE)

    msg = serde.task_header_to_proto(header)

    assert msg.kind == pb.TASK_KIND_EVALUATE
    assert serde.task_header_from_proto(msg).kind is TaskKind.EVALUATE


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", [0, 5, 99])
def test_unknown_task_kind_is_refused(kind):
    msg = wire(pb.TaskHeader(run_id="r", kind=kind))

    with pytest.raises(InvalidUpdateError, match=f"unknown task kind {kind}"):
        serde.task_header_from_proto(msg)


def test_empty_config_value_is_refused_naming_the_key():
    msg = wire(pb.TaskHeader(config={"lr": pb.ConfigValue()}))

    with pytest.raises(InvalidUpdateError, match="config value 'lr' is empty"):
        serde.config_from_proto(msg.config)


def test_unsupported_config_type_cannot_be_sent():
    with pytest.raises(TypeError, match=r"'layers'.*list"):
        serde.config_to_proto({"layers": [1, 2]})


def test_unknown_dtype_in_a_header_is_refused_naming_it():
    msg = pb.UpdateHeader(tensors=[pb.TensorSpec(name="w", dtype="float8", shape=[2])])

    with pytest.raises(InvalidUpdateError, match="unknown dtype 'float8'"):
        serde.update_message_from_bytes(pb.UpdateMessage(header=msg).SerializeToString())


def test_too_many_dimensions_in_a_header_are_refused():
    msg = pb.TaskHeader(
        kind=pb.TASK_KIND_TRAIN,
        tensors=[pb.TensorSpec(name="deep", dtype="int8", shape=[1] * (MAX_DIMS + 1))],
    )

    with pytest.raises(InvalidUpdateError, match=r"'deep'.*dimensions"):
        serde.task_message_from_bytes(pb.TaskMessage(header=msg).SerializeToString())


@pytest.mark.parametrize(
    ("from_bytes", "what"),
    [
        (serde.task_message_from_bytes, "task message"),
        (serde.update_message_from_bytes, "update message"),
    ],
)
def test_message_without_a_body_is_refused(from_bytes, what):
    with pytest.raises(InvalidUpdateError, match=f"{what} without a body"):
        from_bytes(b"")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_are_refused_naming_them(bad):
    trailer = pb.UpdateTrailer(digest=b"d", metrics={"loss": bad, "accuracy": 0.5})
    evaluation = pb.UpdateTrailer(digest=b"d", eval_metrics={"eval_loss": bad})
    report = pb.EvaluationReport(round=1, num_examples=3, metrics={"accuracy": 0.9, "loss": bad})

    with pytest.raises(InvalidUpdateError, match=r"non-finite metric values: loss$"):
        serde.update_trailer_from_proto(trailer)
    with pytest.raises(InvalidUpdateError, match=r"non-finite metric values: eval_loss$"):
        serde.update_message_from_bytes(pb.UpdateMessage(trailer=evaluation).SerializeToString())
    with pytest.raises(InvalidUpdateError, match=r"non-finite metric values: loss$"):
        serde.evaluation_report_from_proto(wire(report))


def test_absurdly_large_metrics_are_refused_naming_them():
    msg = pb.UpdateTrailer(digest=b"d", metrics={"loss": 1e300, "ok": 1e30, "acc": -2e30})

    with pytest.raises(InvalidUpdateError, match=r"metric values beyond \+-1e\+30: acc, loss$"):
        serde.update_message_from_bytes(pb.UpdateMessage(trailer=msg).SerializeToString())


def test_several_non_finite_metrics_are_all_named():
    msg = pb.UpdateTrailer(metrics={"b": math.nan, "ok": 1.0, "a": math.inf})

    with pytest.raises(InvalidUpdateError, match=r"non-finite metric values: a, b$"):
        serde.update_trailer_from_proto(msg)


# ----------------------------------------------------------------------------- chunk fast path


def proto_chunk_bytes(msg_type, chunk: Chunk) -> bytes:
    inner = pb.Chunk(tensor=chunk.tensor, offset=chunk.offset, data=bytes(chunk.data))
    return msg_type(chunk=inner).SerializeToString()


EDGE_CHUNKS = [
    Chunk(0, 0, b"x"),
    Chunk(0, 0, b""),
    Chunk(1, 0, b"\x00" * 200),
    Chunk(0, 2**32 + 7, b"abcd"),
    Chunk(7, 2**63, b"abcd"),
    Chunk(U32, U64, b"\xff"),
]


@pytest.mark.parametrize("chunk", EDGE_CHUNKS, ids=lambda c: f"t{c.tensor}-o{c.offset}")
@pytest.mark.parametrize(
    ("encode", "msg_type"),
    [(serde.task_chunk_bytes, pb.TaskMessage), (serde.update_chunk_bytes, pb.UpdateMessage)],
    ids=["task", "update"],
)
def test_hand_written_chunk_bytes_are_what_protobuf_writes(encode, msg_type, chunk):
    data = encode(chunk)
    parsed = msg_type.FromString(data)

    assert data == proto_chunk_bytes(msg_type, chunk)
    assert parsed.WhichOneof("body") == "chunk"
    assert (parsed.chunk.tensor, parsed.chunk.offset, parsed.chunk.data) == as_tuple(chunk)[1:]


@given(chunks)
def test_hand_written_chunk_bytes_parse_back_on_both_paths(chunk):
    for encode, msg_type, decode in [
        (serde.task_chunk_bytes, pb.TaskMessage, serde.task_message_from_bytes),
        (serde.update_chunk_bytes, pb.UpdateMessage, serde.update_message_from_bytes),
    ]:
        data = encode(chunk)
        parsed = msg_type.FromString(data).chunk

        assert data == proto_chunk_bytes(msg_type, chunk)
        assert (parsed.tensor, parsed.offset, parsed.data) == as_tuple(chunk)[1:]
        assert as_tuple(decode(data)) == as_tuple(chunk)


def test_hand_written_chunk_of_a_megabyte():
    payload = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    chunk = Chunk(3, 5 * 2**32, payload)

    data = serde.update_chunk_bytes(chunk)

    assert pb.UpdateMessage.FromString(data).chunk.data == payload
    assert as_tuple(serde.update_message_from_bytes(data)) == as_tuple(chunk)


def test_hand_written_chunk_takes_typed_memoryviews_as_bytes():
    arr = np.array([1.5, -2.0, 3.25], dtype="<f4")

    data = serde.task_chunk_bytes(Chunk(2, 12, memoryview(arr)))

    assert pb.TaskMessage.FromString(data).chunk.data == arr.tobytes()


def test_fast_path_does_not_copy_the_data():
    data = serde.update_chunk_bytes(Chunk(1, 8, b"abcdefgh"))

    chunk = serde.update_message_from_bytes(data)

    assert isinstance(chunk.data, memoryview)
    assert chunk.data.obj is data
    assert bytes(chunk.data) == b"abcdefgh"


# Non-canonical encodings: the fast path must either decline (and protobuf decides) or agree.


def varint(n: int, pad: int = 0) -> bytes:
    """Varint of ``n``, made ``pad`` bytes longer with redundant continuation bytes."""
    out = bytearray(serde._varint(n))
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


@st.composite
def padded_varints(draw, max_value=U64):
    n = draw(st.integers(0, max_value))
    room = 10 - len(serde._varint(n))
    return varint(n, draw(st.integers(0, max(room, 0))))


@st.composite
def chunk_fields(draw):
    kind = draw(st.sampled_from(["tensor", "offset", "data", "unknown-varint", "unknown-bytes"]))
    if kind == "tensor":
        return b"\x08" + draw(padded_varints())
    if kind == "offset":
        return b"\x10" + draw(padded_varints())
    blob = draw(st.binary(max_size=20))
    if kind == "data":
        return b"\x1a" + varint(len(blob), draw(st.integers(0, 2))) + blob
    if kind == "unknown-varint":
        return b"\x48" + draw(padded_varints())  # field 9
    return b"\x7a" + varint(len(blob)) + blob  # field 15


@st.composite
def chunk_like_messages(draw):
    inner = b"".join(draw(st.lists(chunk_fields(), max_size=5)))
    outer = b"\x12" + varint(len(inner), draw(st.integers(0, 2))) + inner
    tail = draw(
        st.sampled_from(
            [b"", b"\x12\x00", b"\x38\x01", b"\x1a\x00", b"\x0a\x00", b"\x12\x02\x08\x05"]
        )
    )
    return outer + tail


def decode_with_protobuf(msg_type, from_proto, data: bytes):
    try:
        msg = msg_type.FromString(data)
    except DecodeError:
        return "refused"
    try:
        return as_tuple(from_proto(msg))
    except InvalidUpdateError:
        return "refused"


def decode_with_fedhive(from_bytes, data: bytes):
    try:
        return as_tuple(from_bytes(data))
    except InvalidUpdateError:
        return "refused"


@given(chunk_like_messages())
def test_fast_path_agrees_with_protobuf_on_non_canonical_encodings(data):
    update = decode_with_protobuf(pb.UpdateMessage, serde.update_message_from_proto, data)
    task = decode_with_protobuf(pb.TaskMessage, serde.task_message_from_proto, data)

    assert decode_with_fedhive(serde.update_message_from_bytes, data) == update
    assert decode_with_fedhive(serde.task_message_from_bytes, data) == task


@st.composite
def canonical_layouts(draw):
    """The fast path's own layout (tensor?, offset?, data), any uint64 values, padded varints."""
    inner = b""
    if draw(st.booleans()):
        inner += b"\x08" + draw(padded_varints())
    if draw(st.booleans()):
        inner += b"\x10" + draw(padded_varints())
    blob = draw(st.binary(max_size=20))
    inner += b"\x1a" + varint(len(blob), draw(st.integers(0, 2))) + blob
    return b"\x12" + varint(len(inner), draw(st.integers(0, 2))) + inner


@given(canonical_layouts())
def test_fast_path_agrees_with_protobuf_on_its_own_layout(data):
    update = decode_with_protobuf(pb.UpdateMessage, serde.update_message_from_proto, data)

    assert decode_with_fedhive(serde.update_message_from_bytes, data) == update
    assert decode_with_fedhive(serde.task_message_from_bytes, data) == update


@pytest.mark.parametrize("tensor", [2**32, 2**32 + 3, U64])
def test_fast_path_leaves_a_tensor_index_beyond_32_bits_to_protobuf(tensor):
    inner = b"\x08" + serde._varint(tensor) + b"\x1a\x02ab"
    data = b"\x12" + serde._varint(len(inner)) + inner

    expected = decode_with_protobuf(pb.UpdateMessage, serde.update_message_from_proto, data)

    assert expected == ("chunk", tensor % 2**32, 0, b"ab")  # uint32: protobuf keeps the low bits
    assert decode_with_fedhive(serde.update_message_from_bytes, data) == expected
    assert decode_with_fedhive(serde.task_message_from_bytes, data) == expected


@pytest.mark.parametrize("offset", [2**64 + 5, 2**70 - 1])
def test_fast_path_agrees_with_protobuf_on_an_offset_beyond_64_bits(offset):
    inner = b"\x10" + serde._varint(offset) + b"\x1a\x02ab"
    data = b"\x12" + serde._varint(len(inner)) + inner

    expected = decode_with_protobuf(pb.UpdateMessage, serde.update_message_from_proto, data)

    assert expected == ("chunk", 0, offset % 2**64, b"ab")
    assert decode_with_fedhive(serde.update_message_from_bytes, data) == expected


# ----------------------------------------------------------------------------- garbage


def assert_decodes_or_refuses(data: bytes) -> None:
    """Each decoder gives a message of its stream, or raises InvalidUpdateError; nothing else."""
    for from_bytes, kinds in [
        (serde.update_message_from_bytes, (UpdateHeader, Chunk, UpdateTrailer)),
        (serde.task_message_from_bytes, (TaskHeader, Chunk, TaskTrailer)),
    ]:
        try:
            result = from_bytes(data)
        except InvalidUpdateError:
            continue
        assert isinstance(result, kinds)


@given(st.binary(max_size=200))
def test_garbage_bytes_decode_or_raise_invalid_update_only(data):
    assert_decodes_or_refuses(data)


SEED_MESSAGES = [
    pb.UpdateMessage(
        header=pb.UpdateHeader(
            auth=pb.NodeAuth(node_id="node-1", token=b"secret"),
            round=3,
            num_examples=50,
            tensors=[pb.TensorSpec(name="w", dtype="float32", shape=[2, 3])],
        )
    ).SerializeToString(),
    pb.UpdateMessage(
        trailer=pb.UpdateTrailer(
            digest=bytes(32), metrics={"loss": 0.5}, eval_metrics={"acc": 1.0}, eval_examples=3
        )
    ).SerializeToString(),
    pb.TaskMessage(
        header=pb.TaskHeader(
            run_id="run",
            round=1,
            kind=pb.TASK_KIND_TRAIN,
            config={"lr": pb.ConfigValue(float_value=0.1), "epochs": pb.ConfigValue(int_value=2)},
            tensors=[pb.TensorSpec(name="b", dtype="bfloat16", shape=[4])],
            payload_bytes=8,
            chunk_size=1024,
        )
    ).SerializeToString(),
    serde.update_chunk_bytes(Chunk(1, 2**33, b"abcdefgh")),
]


@given(
    st.sampled_from(SEED_MESSAGES),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 4),
)
def test_corrupted_messages_decode_or_raise_invalid_update_only(seed, edits, cut):
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: len(data) - cut])

    assert_decodes_or_refuses(data)


def test_truncated_message_is_refused_as_malformed():
    data = SEED_MESSAGES[0][:-3]

    with pytest.raises(InvalidUpdateError, match="malformed UpdateMessage"):
        serde.update_message_from_bytes(data)


@pytest.mark.parametrize("claim", [math.nan, math.inf, -0.5, 1e7])
def test_an_absurd_dp_epsilon_claim_is_refused(claim):
    # Prepare: a hostile node's trailer
    msg = pb.UpdateTrailer(digest=b"d", dp_epsilon=claim)

    # Execute / Assert
    with pytest.raises(InvalidUpdateError, match="dp_epsilon must be a finite number"):
        serde.update_trailer_from_proto(wire(msg))


def test_a_trailer_without_dp_epsilon_reads_as_none_and_zero_travels():
    assert serde.update_trailer_from_proto(pb.UpdateTrailer(digest=b"d")).dp_epsilon is None
    zero = serde.update_trailer_to_proto(UpdateTrailer(digest=b"d", dp_epsilon=0.0))
    assert serde.update_trailer_from_proto(wire(zero)).dp_epsilon == 0.0
