"""A real node process against a hand-built coordinator that serves a broken (non-finite) model:
the node refuses every download, and must back off between tries rather than spin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedhive.common.api.task import TaskContext, load_task
from fedhive.common.wire.chunks import payload_digest
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.app import initial_model
from tests.integration.harness import CONSTANT_TASK, start_node, wait_all

SERVICE = "fedhive.proto.v1.Coordinator"
TASK_ARGS = {"params": 1000, "tensors": 3}


class BrokenModelCoordinator:
    """Answers Join, Heartbeat, Leave and DeclineTask, and serves an all-inf model on every pull."""

    def __init__(self) -> None:
        task = load_task(CONSTANT_TASK, TaskContext(role="server", args=TASK_ARGS))
        specs, arrays = initial_model(task)
        broken = [np.full(a.size // 4, np.inf, dtype=np.float32).tobytes() for a in arrays]
        header = pb.TaskHeader(
            run_id="r",
            round=1,
            kind=pb.TASK_KIND_TRAIN,
            tensors=[pb.TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape) for s in specs],
            payload_bytes=sum(len(b) for b in broken),
            chunk_size=1 << 20,
        )
        self.messages = [pb.TaskMessage(header=header)]
        self.messages += [
            pb.TaskMessage(chunk=pb.Chunk(tensor=i, offset=0, data=b)) for i, b in enumerate(broken)
        ]
        trailer = pb.TaskTrailer(digest=payload_digest(broken))
        self.messages.append(pb.TaskMessage(trailer=trailer))
        self.pulls = 0
        self.lock = threading.Lock()

    def pull(self, request: bytes, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        with self.lock:
            self.pulls += 1
        yield from self.messages

    def handler(self) -> grpc.GenericRpcHandler:
        auth = pb.NodeAuth(node_id="n-1", token=b"t" * 32)

        def unary(reply: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: reply, response_serializer=lambda m: m.SerializeToString()
            )

        handlers = {
            "Join": unary(pb.JoinReply(auth=auth, run_id="r", heartbeat_interval_s=1.0)),
            "Heartbeat": unary(pb.HeartbeatReply(round=1, heartbeat_interval_s=1.0)),
            "Leave": unary(pb.Ack()),
            "DeclineTask": unary(pb.Ack()),
            "PullTask": grpc.unary_stream_rpc_method_handler(
                self.pull, response_serializer=lambda m: m.SerializeToString()
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def test_a_node_refusing_broken_downloads_backs_off_instead_of_spinning(tmp_path: Path) -> None:
    # Prepare: the hostile coordinator on a loopback port
    fake = BrokenModelCoordinator()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((fake.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log = tmp_path / "node.log"
    proc = start_node(f"127.0.0.1:{port}", "victim", seed=0, log=log)

    # Execute: wait for its first refusal, then count its pulls over 3 s
    deadline = time.monotonic() + 60
    while fake.pulls == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = fake.pulls
    time.sleep(3.0)
    pulls = fake.pulls - first
    proc.terminate()
    wait_all([proc], timeout=30)
    server.stop(0).wait()

    # Assert: a handful of tries (0.25-0.5 s, then doubling), not a tight loop; the node says why
    assert first >= 1
    assert pulls <= 8, (pulls, log.read_text()[-3000:])
    assert "non-finite" in log.read_text()
