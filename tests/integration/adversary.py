"""A hand-driven node speaking raw protobuf, to send what a well-behaved node never would."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import xxhash

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.proto.v1 import coordinator_pb2_grpc as pb_grpc


@dataclass
class Task:
    round: int
    specs: list[pb.TensorSpec]
    arrays: list[np.ndarray]
    chunk_size: int


class Adversary:
    def __init__(self, channel: grpc.Channel, name: str = "mallory") -> None:
        self.stub = pb_grpc.CoordinatorStub(channel)
        reply = self.stub.Join(
            pb.JoinRequest(name=name, device="cpu", num_examples=10, protocol_version=1)
        )
        self.auth = reply.auth

    def pull(self, wait_s: float = 30.0) -> Task | None:
        """The next TRAIN task (None on FINISH)."""
        while True:
            msgs = list(self.stub.PullTask(pb.PullTaskRequest(auth=self.auth, wait_s=wait_s)))
            header = msgs[0].header
            if header.kind == pb.TASK_KIND_FINISH:
                return None
            if header.kind != pb.TASK_KIND_TRAIN:
                continue
            specs = list(header.tensors)
            arrays = [np.zeros(int(np.prod(s.shape)), dtype=np.float32) for s in specs]
            for m in msgs[1:-1]:
                c = m.chunk
                view = arrays[c.tensor].view(np.uint8)
                view[c.offset : c.offset + len(c.data)] = np.frombuffer(c.data, np.uint8)
            return Task(header.round, specs, arrays, header.chunk_size)

    def messages(
        self,
        task: Task,
        *,
        arrays: list[np.ndarray] | None = None,
        specs: list[pb.TensorSpec] | None = None,
        round_: int | None = None,
        auth: pb.NodeAuth | None = None,
        num_examples: int = 10,
        digest: bytes | None = None,
        trailer: bool = True,
        extra_chunk: bytes | None = None,
        chunk_size: int | None = None,
        eval_examples: int = 0,
        metrics: dict[str, float] | None = None,
        dp_epsilon: float | None = None,
    ) -> list[pb.UpdateMessage]:
        arrays = arrays if arrays is not None else task.arrays
        size = chunk_size or task.chunk_size
        out = [
            pb.UpdateMessage(
                header=pb.UpdateHeader(
                    auth=auth or self.auth,
                    round=task.round if round_ is None else round_,
                    num_examples=num_examples,
                    tensors=specs if specs is not None else task.specs,
                )
            )
        ]
        h = xxhash.xxh3_128()
        for i, arr in enumerate(arrays):
            raw = arr.tobytes()
            for start in range(0, len(raw), size):
                data = raw[start : start + size]
                h.update(data)
                out.append(pb.UpdateMessage(chunk=pb.Chunk(tensor=i, offset=start, data=data)))
        if extra_chunk is not None:
            out.append(
                pb.UpdateMessage(chunk=pb.Chunk(tensor=len(arrays), offset=0, data=extra_chunk))
            )
        if trailer:
            out.append(
                pb.UpdateMessage(
                    trailer=pb.UpdateTrailer(
                        digest=digest if digest is not None else h.digest(),
                        eval_examples=eval_examples,
                        metrics=metrics or {},
                        dp_epsilon=dp_epsilon,
                    )
                )
            )
        return out

    def push(self, messages: list[pb.UpdateMessage]) -> grpc.RpcError | pb.PushReply:
        def gen() -> Iterator[pb.UpdateMessage]:
            yield from messages

        try:
            return self.stub.PushUpdate(gen())
        except grpc.RpcError as exc:
            return exc
