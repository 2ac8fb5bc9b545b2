"""The only place where protobuf messages and fedhive's domain types meet.

``x_to_proto`` / ``x_from_proto`` for every message of ``fedhive.proto.v1``. Decoding validates
what a type can validate on its own (known dtype, sane shapes, a body present) and raises
:class:`~fedhive.common.errors.InvalidUpdateError` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.privacy.sgd import check_epsilon_claim
from fedhive.common.wire.chunks import Chunk
from fedhive.common.wire.messages import (
    ConfigScalar,
    EvaluationReport,
    JoinReply,
    JoinRequest,
    NodeAuth,
    TaskHeader,
    TaskKind,
    TaskMessage,
    TaskTrailer,
    UpdateHeader,
    UpdateMessage,
    UpdateTrailer,
)
from fedhive.common.wire.tensors import TensorSpec
from fedhive.proto.v1 import coordinator_pb2 as pb

# ----------------------------------------------------------------------------- small parts


def auth_to_proto(auth: NodeAuth) -> pb.NodeAuth:
    return pb.NodeAuth(node_id=auth.node_id, token=auth.token)


def auth_from_proto(msg: pb.NodeAuth) -> NodeAuth:
    return NodeAuth(node_id=msg.node_id, token=bytes(msg.token))


def tensor_spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, dtype=spec.dtype, shape=list(spec.shape))


def tensor_spec_from_proto(msg: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(name=msg.name, dtype=msg.dtype, shape=tuple(int(d) for d in msg.shape))


def config_to_proto(config: Mapping[str, ConfigScalar]) -> dict[str, pb.ConfigValue]:
    out: dict[str, pb.ConfigValue] = {}
    for key, value in config.items():
        if isinstance(value, bool):
            out[key] = pb.ConfigValue(bool_value=value)
        elif isinstance(value, int):
            out[key] = pb.ConfigValue(int_value=value)
        elif isinstance(value, float):
            out[key] = pb.ConfigValue(float_value=value)
        elif isinstance(value, str):
            out[key] = pb.ConfigValue(string_value=value)
        else:
            raise TypeError(f"config value {key!r} has unsupported type {type(value).__name__}")
    return out


def config_from_proto(msg: Mapping[str, pb.ConfigValue]) -> dict[str, ConfigScalar]:
    out: dict[str, ConfigScalar] = {}
    for key, value in msg.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidUpdateError(f"config value {key!r} is empty")
        out[key] = getattr(value, kind)
    return out


# Metrics are averaged weighted by example counts: a value beyond this is absurd, and could
# overflow the weighted sums to inf.
MAX_METRIC_ABS = 1e30


def metrics_from_proto(msg: Mapping[str, float]) -> dict[str, float]:
    out = dict(msg)
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise InvalidUpdateError(f"non-finite metric values: {', '.join(sorted(bad))}")
    huge = [k for k, v in out.items() if abs(v) > MAX_METRIC_ABS]
    if huge:
        raise InvalidUpdateError(
            f"metric values beyond +-{MAX_METRIC_ABS:g}: {', '.join(sorted(huge))}"
        )
    return out


def chunk_to_proto(chunk: Chunk) -> pb.Chunk:
    return pb.Chunk(tensor=chunk.tensor, offset=chunk.offset, data=bytes(chunk.data))


def chunk_from_proto(msg: pb.Chunk) -> Chunk:
    return Chunk(tensor=msg.tensor, offset=msg.offset, data=msg.data)


# ----------------------------------------------------------------------------- join


def join_request_to_proto(req: JoinRequest) -> pb.JoinRequest:
    return pb.JoinRequest(
        name=req.name,
        device=req.device,
        num_examples=req.num_examples,
        protocol_version=req.protocol_version,
        identity_key=req.identity_key,
        identity_cert=req.identity_cert,
        run_id=req.run_id,
    )


def join_request_from_proto(msg: pb.JoinRequest) -> JoinRequest:
    return JoinRequest(
        name=msg.name,
        device=msg.device,
        num_examples=msg.num_examples,
        protocol_version=msg.protocol_version,
        identity_key=_identity_key(bytes(msg.identity_key)),
        identity_cert=_identity_cert(bytes(msg.identity_cert)),
        run_id=bounded_text(msg.run_id, "run_id", MAX_RUN_ID),
    )


MAX_IDENTITY_CERT = 8192
MAX_RUN_ID = 64


def bounded_text(text: str, what: str, limit: int) -> str:
    """A wire string: at most ``limit`` characters, no control characters (refused otherwise)."""
    if len(text) > limit:
        raise InvalidUpdateError(f"{what} of {len(text)} characters exceeds {limit}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidUpdateError(f"{what} holds control characters")
    return text


def _identity_cert(cert: bytes) -> bytes:
    if len(cert) > MAX_IDENTITY_CERT:
        raise InvalidUpdateError(
            f"identity certificate of {len(cert)} bytes exceeds {MAX_IDENTITY_CERT} bytes"
        )
    return cert


def _identity_key(key: bytes) -> bytes:
    if len(key) not in (0, 32):
        raise InvalidUpdateError(f"identity key must be 32 bytes (Ed25519), got {len(key)}")
    return key


def join_reply_to_proto(rep: JoinReply) -> pb.JoinReply:
    return pb.JoinReply(
        auth=auth_to_proto(rep.auth),
        run_id=rep.run_id,
        heartbeat_interval_s=rep.heartbeat_interval_s,
    )


def join_reply_from_proto(msg: pb.JoinReply) -> JoinReply:
    return JoinReply(
        auth=auth_from_proto(msg.auth),
        run_id=msg.run_id,
        heartbeat_interval_s=msg.heartbeat_interval_s,
    )


# ----------------------------------------------------------------------------- task stream


def task_header_to_proto(h: TaskHeader) -> pb.TaskHeader:
    return pb.TaskHeader(
        run_id=h.run_id,
        round=h.round,
        kind=pb.TaskKind.Name(int(h.kind)),
        config=config_to_proto(h.config),
        tensors=[tensor_spec_to_proto(s) for s in h.tensors],
        payload_bytes=h.payload_bytes,
        chunk_size=h.chunk_size,
        retry_after_s=h.retry_after_s,
    )


def task_header_from_proto(msg: pb.TaskHeader) -> TaskHeader:
    try:
        kind = TaskKind(msg.kind)
    except ValueError:
        raise InvalidUpdateError(f"unknown task kind {msg.kind}") from None
    return TaskHeader(
        run_id=msg.run_id,
        round=msg.round,
        kind=kind,
        config=config_from_proto(msg.config),
        tensors=tuple(tensor_spec_from_proto(s) for s in msg.tensors),
        payload_bytes=msg.payload_bytes,
        chunk_size=msg.chunk_size,
        retry_after_s=msg.retry_after_s,
    )


def task_message_to_proto(m: TaskMessage) -> pb.TaskMessage:
    if isinstance(m, TaskHeader):
        return pb.TaskMessage(header=task_header_to_proto(m))
    if isinstance(m, Chunk):
        return pb.TaskMessage(chunk=chunk_to_proto(m))
    return pb.TaskMessage(trailer=pb.TaskTrailer(digest=m.digest))


def task_message_from_proto(msg: pb.TaskMessage) -> TaskMessage:
    body = msg.WhichOneof("body")
    if body == "header":
        return task_header_from_proto(msg.header)
    if body == "chunk":
        return chunk_from_proto(msg.chunk)
    if body == "trailer":
        return TaskTrailer(digest=bytes(msg.trailer.digest))
    raise InvalidUpdateError("task message without a body")


def task_message_to_bytes(m: TaskMessage) -> bytes:
    """Serialized TaskMessage; the coordinator encodes each round's chunks once for all nodes."""
    return task_message_to_proto(m).SerializeToString()


# ----------------------------------------------------------------------------- update stream


def update_header_to_proto(h: UpdateHeader) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        auth=auth_to_proto(h.auth),
        round=h.round,
        num_examples=h.num_examples,
        tensors=[tensor_spec_to_proto(s) for s in h.tensors],
    )


def update_header_from_proto(msg: pb.UpdateHeader) -> UpdateHeader:
    return UpdateHeader(
        auth=auth_from_proto(msg.auth),
        round=msg.round,
        num_examples=msg.num_examples,
        tensors=tuple(tensor_spec_from_proto(s) for s in msg.tensors),
    )


def update_trailer_to_proto(t: UpdateTrailer) -> pb.UpdateTrailer:
    return pb.UpdateTrailer(
        digest=t.digest,
        metrics=dict(t.metrics),
        eval_metrics=dict(t.eval_metrics),
        eval_examples=t.eval_examples,
        dp_epsilon=t.dp_epsilon,
    )


def update_trailer_from_proto(msg: pb.UpdateTrailer) -> UpdateTrailer:
    epsilon = msg.dp_epsilon if msg.HasField("dp_epsilon") else None
    if epsilon is not None:
        try:
            check_epsilon_claim(epsilon)
        except ValueError as exc:
            raise InvalidUpdateError(str(exc)) from None
    return UpdateTrailer(
        digest=bytes(msg.digest),
        metrics=metrics_from_proto(msg.metrics),
        eval_metrics=metrics_from_proto(msg.eval_metrics),
        eval_examples=msg.eval_examples,
        dp_epsilon=epsilon,
    )


def update_message_to_proto(m: UpdateMessage) -> pb.UpdateMessage:
    if isinstance(m, UpdateHeader):
        return pb.UpdateMessage(header=update_header_to_proto(m))
    if isinstance(m, Chunk):
        return pb.UpdateMessage(chunk=chunk_to_proto(m))
    return pb.UpdateMessage(trailer=update_trailer_to_proto(m))


def update_message_from_proto(msg: pb.UpdateMessage) -> UpdateMessage:
    body = msg.WhichOneof("body")
    if body == "header":
        return update_header_from_proto(msg.header)
    if body == "chunk":
        return chunk_from_proto(msg.chunk)
    if body == "trailer":
        return update_trailer_from_proto(msg.trailer)
    raise InvalidUpdateError("update message without a body")


# ----------------------------------------------------------------------------- evaluation


def evaluation_report_to_proto(r: EvaluationReport) -> pb.EvaluationReport:
    return pb.EvaluationReport(
        auth=auth_to_proto(r.auth),
        round=r.round,
        num_examples=r.num_examples,
        metrics=dict(r.metrics),
    )


def evaluation_report_from_proto(msg: pb.EvaluationReport) -> EvaluationReport:
    return EvaluationReport(
        auth=auth_from_proto(msg.auth),
        round=msg.round,
        num_examples=msg.num_examples,
        metrics=metrics_from_proto(msg.metrics),
    )


# ----------------------------------------------------------------------------- chunk fast path
#
# Chunks are nearly all of the bytes on the wire. Their encoding is fixed by the .proto
# (TaskMessage.chunk and UpdateMessage.chunk are both field 2; Chunk is tensor=1, offset=2,
# data=3), so we write it by hand with a single copy of the data and parse it without copying.
# Anything that is not the canonical layout falls back to the protobuf parser, which stays the
# authority; tests check both paths agree.

_CHUNK_FIELD_TAG = 0x12  # field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _chunk_bytes(chunk: Chunk) -> bytes:
    data = memoryview(chunk.data).cast("B")
    head = bytearray()
    if chunk.tensor:
        head += b"\x08" + _varint(chunk.tensor)
    if chunk.offset:
        head += b"\x10" + _varint(chunk.offset)
    if len(data):
        head += b"\x1a" + _varint(len(data))
    inner_len = len(head) + len(data)
    return b"".join((bytes([_CHUNK_FIELD_TAG]), _varint(inner_len), head, data))


def task_chunk_bytes(chunk: Chunk) -> bytes:
    """Wire bytes of ``TaskMessage(chunk=...)``, with one copy of the data."""
    return _chunk_bytes(chunk)


def update_chunk_bytes(chunk: Chunk) -> bytes:
    """Wire bytes of ``UpdateMessage(chunk=...)``, with one copy of the data."""
    return _chunk_bytes(chunk)


def _fast_chunk(buf: bytes) -> Chunk | None:
    """Parse the canonical chunk layout without copying the data; None if not canonical."""
    try:
        if len(buf) < 2 or buf[0] != _CHUNK_FIELD_TAG:
            return None
        inner_len, pos = _read_varint(buf, 1)
        if pos + inner_len != len(buf):
            return None
        tensor = offset = 0
        if pos < len(buf) and buf[pos] == 0x08:
            tensor, pos = _read_varint(buf, pos + 1)
        if pos < len(buf) and buf[pos] == 0x10:
            offset, pos = _read_varint(buf, pos + 1)
        if pos >= len(buf) or buf[pos] != 0x1A:
            return None
        length, pos = _read_varint(buf, pos + 1)
        if pos + length != len(buf) or tensor >= 1 << 32 or offset >= 1 << 64:
            return None
        return Chunk(tensor, offset, memoryview(buf)[pos:])
    except ValueError:
        return None


def _parse(msg_type: type[Any], buf: bytes) -> Any:
    msg = msg_type()
    try:
        msg.ParseFromString(buf)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidUpdateError(f"malformed {msg_type.__name__}: {exc}") from exc
    return msg


def update_message_from_bytes(buf: bytes) -> UpdateMessage:
    chunk = _fast_chunk(buf)
    if chunk is not None:
        return chunk
    return update_message_from_proto(_parse(pb.UpdateMessage, buf))


def task_message_from_bytes(buf: bytes) -> TaskMessage:
    chunk = _fast_chunk(buf)
    if chunk is not None:
        return chunk
    return task_message_from_proto(_parse(pb.TaskMessage, buf))
