"""Fuzzing the coordinator's upload entry point over real gRPC (hypothesis).

Each example mutates a correct update stream (drop, swap, duplicate, truncate, flip a byte, NaN,
wrong digest, random bytes, replayed identity, absurd shapes ...) and sends it as raw bytes. The
coordinator must answer every broken stream with a refusal status (never INTERNAL/UNKNOWN), accept
exactly the unmodified streams, stay responsive, and fold nothing but the accepted ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import xxhash
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.integration.harness import CoordinatorThread, channel, start_coordinator

EXAMPLES = int(os.environ.get("FEDHIVE_FUZZ_EXAMPLES", "150"))
IDENTITIES = EXAMPLES * 4 + 250  # shrinking a failure replays examples with fresh identities
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
}


class Federation:
    def __init__(self, tmp: Path) -> None:
        self.coord: CoordinatorThread = start_coordinator(
            tmp,
            rounds=1,
            min_nodes=IDENTITIES,
            chunk_size=1024,
            task_args={"params": 1500, "tensors": 3},
            round_timeout_s=3600,
            heartbeat_timeout_s=3600,
            max_registered_nodes=IDENTITIES,
        )
        self.channel = channel(self.coord.address)
        stub = pb_grpc.CoordinatorStub(self.channel)
        self.auths = [
            stub.Join(pb.JoinRequest(name=f"fz{i}", num_examples=7, protocol_version=1)).auth
            for i in range(IDENTITIES)
        ]
        first = list(stub.PullTask(pb.PullTaskRequest(auth=self.auths[0], wait_s=30)))
        self.header = first[0].header
        self.push = self.channel.stream_unary(
            "/fedhive.proto.v1.Coordinator/PushUpdate",
            request_serializer=lambda b: b,
            response_deserializer=pb.PushReply.FromString,
        )
        self.used = 1  # identity 0 stays honest-but-silent
        self.accepted = 0

    def valid_stream(self, auth: pb.NodeAuth) -> list[bytes]:
        h = xxhash.xxh3_128()
        msgs = [
            pb.UpdateMessage(
                header=pb.UpdateHeader(
                    auth=auth, round=self.header.round, num_examples=7, tensors=self.header.tensors
                )
            ).SerializeToString()
        ]
        for i, spec in enumerate(self.header.tensors):
            raw = np.full(int(np.prod(spec.shape)), 0.5, dtype=np.float32).tobytes()
            for start in range(0, len(raw), 1024):
                data = raw[start : start + 1024]
                h.update(data)
                chunk = pb.Chunk(tensor=i, offset=start, data=data)
                msgs.append(pb.UpdateMessage(chunk=chunk).SerializeToString())
        trailer = pb.UpdateTrailer(digest=h.digest())
        msgs.append(pb.UpdateMessage(trailer=trailer).SerializeToString())
        return msgs


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = Federation(tmp_path_factory.mktemp("fuzz"))
    yield fed
    fed.coord.stop()
    fed.channel.close()


def absurd_header(fed: Federation, auth: pb.NodeAuth, dims: list[int], dtype: str) -> bytes:
    specs = list(fed.header.tensors)
    specs[0] = pb.TensorSpec(name=specs[0].name, dtype=dtype, shape=dims)
    header = pb.UpdateHeader(auth=auth, round=fed.header.round, num_examples=7, tensors=specs)
    return pb.UpdateMessage(header=header).SerializeToString()


def parse(buf: bytes) -> pb.UpdateMessage | None:
    """A message of the stream being mutated, or None when an earlier op made it garbage."""
    try:
        return pb.UpdateMessage.FromString(buf)
    except DecodeError:
        return None


def mutate(
    fed: Federation, msgs: list[bytes], ops: list[tuple[str, int, int, bytes]]
) -> list[bytes]:
    out = list(msgs)
    for op, i, j, blob in ops:
        if not out:
            break
        i, j = i % len(out), j % len(out)
        if op == "drop":
            del out[i]
        elif op == "swap":
            out[i], out[j] = out[j], out[i]
        elif op == "dup":
            out.insert(i, out[i])
        elif op == "truncate":
            out = out[:i]
        elif op == "flip" and len(out[i]) > 8:
            b = bytearray(out[i])
            b[-1 - j % 8] ^= 0x40
            out[i] = bytes(b)
        elif op == "nan":
            msg = parse(out[i])
            if msg is not None and msg.WhichOneof("body") == "chunk":
                data = bytearray(msg.chunk.data)
                data[0:4] = np.float32(np.nan).tobytes()
                msg.chunk.data = bytes(data)
                out[i] = msg.SerializeToString()
        elif op == "garbage":
            out.insert(i, blob)
        elif op == "digest":
            out[-1] = pb.UpdateMessage(trailer=pb.UpdateTrailer(digest=blob)).SerializeToString()
        elif op == "replay":  # another identity's header, or another round
            msg = parse(out[0])
            if msg is not None and msg.WhichOneof("body") == "header":
                if j % 2:
                    msg.header.auth.CopyFrom(fed.auths[0])
                    msg.header.auth.token = blob[:32] or b"x"
                else:
                    msg.header.round = fed.header.round + 1 + (j % 5)
                out[0] = msg.SerializeToString()
        elif op == "absurd":
            dims = [2**40, 2**40] if j % 2 else [2**62, 3, 2**62]
            out[0] = absurd_header(
                fed, pb.UpdateMessage.FromString(msgs[0]).header.auth, dims, "float32"
            )
        elif op == "dtype":
            out[0] = absurd_header(
                fed,
                pb.UpdateMessage.FromString(msgs[0]).header.auth,
                list(fed.header.tensors[0].shape),
                ["float16", "int64", "bogus"][j % 3],
            )
    return out


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "drop",
                "swap",
                "dup",
                "truncate",
                "flip",
                "nan",
                "garbage",
                "digest",
                "replay",
                "absurd",
                "dtype",
            ]
        ),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.binary(max_size=64),
    ),
    max_size=4,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    report_multiple_bugs=False,
)
@given(ops=OPS)
def test_mutated_update_streams_are_refused_cleanly(federation: Federation, ops: list) -> None:
    # Prepare: a fresh selected identity and a mutated stream
    fed = federation
    assert fed.used < IDENTITIES, "out of fuzz identities (a failure being shrunk?)"
    auth = fed.auths[fed.used]
    fed.used += 1
    valid = fed.valid_stream(auth)
    stream = mutate(fed, valid, ops)

    # Execute
    try:
        fed.push(iter(stream), timeout=30)
        outcome: grpc.StatusCode | None = None
    except grpc.RpcError as exc:
        outcome = exc.code()
        details = exc.details() or ""

    # Assert: unmodified streams are accepted, every other one refused with a clear status
    if stream == valid:
        assert outcome is None
        fed.accepted += 1
    else:
        assert outcome in REFUSALS, (ops, outcome)
        assert details and "internal error" not in details
    assert fed.coord.thread.is_alive()


def test_after_fuzzing_only_accepted_updates_were_folded(federation: Federation) -> None:
    # Assert: the aggregate holds exactly the accepted streams; the coordinator still serves
    agg = federation.coord.running.coordinator.aggregator
    assert agg.updates == federation.accepted  # type: ignore[attr-defined]
    stub = pb_grpc.CoordinatorStub(federation.channel)
    reply = stub.Heartbeat(pb.HeartbeatRequest(auth=federation.auths[0]), timeout=10)
    assert reply.round == 1
