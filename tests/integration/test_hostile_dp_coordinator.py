"""A real node process against a hand-built coordinator that asks for too little distributed DP
noise: the node declines the round (reason named) before it downloads, masks or trains, whether
the variance contradicts the task's own settings or falls below the site's own floor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedhive.common.privacy.distributed import DistributedDPSettings, plan
from fedhive.common.wire.serde import config_to_proto
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.integration.harness import start_node, wait_all

SERVICE = "fedhive.proto.v1.Coordinator"
TASK_ARGS = {"params": 1000, "tensors": 3}
ELEMENTS = 1000
SETTINGS = DistributedDPSettings(noise_multiplier=1.0, clip=1.0, bits=16)
HONEST = plan(SETTINGS, 3, ELEMENTS).node_variance


class StingyNoiseCoordinator:
    """Answers Join, Heartbeat, Leave and DeclineTask (recording the reasons), and offers a
    distributed DP round over SecAgg+ whose per-node noise variance is ``variance``."""

    def __init__(self, variance: int) -> None:
        config = {
            "secagg": "secagg+",
            "secagg_round": 1,
            "secagg_nodes": '["n-1", "n-2", "n-3"]',
            "secagg_seed": 7,
            "secagg_degree": 2,
            "secagg_threshold": 2,
            "secagg_clip": SETTINGS.clip,
            "secagg_bits": SETTINGS.bits,
            "secagg_max_weight": 1,
            "secagg_dp_clip": SETTINGS.clip,
            "secagg_dp_variance": str(variance),
            "secagg_dp_noise_multiplier": SETTINGS.noise_multiplier,
            "secagg_dp_expected_dropout": SETTINGS.expected_dropout,
        }
        sizes = [334, 333, 333]
        header = pb.TaskHeader(
            run_id="r",
            round=1,
            kind=pb.TASK_KIND_TRAIN,
            config=config_to_proto(config),
            tensors=[pb.TensorSpec(name=f"w{i}", dtype="float32", shape=[n]) for i, n in
                     enumerate(sizes)],
            payload_bytes=4 * ELEMENTS,
            chunk_size=1 << 20,
        )  # fmt: skip
        self.header = pb.TaskMessage(header=header)
        self.reasons: list[str] = []
        self.secagg_calls = 0
        self.lock = threading.Lock()

    def pull(self, request: bytes, context: grpc.ServicerContext) -> Iterator[pb.TaskMessage]:
        yield self.header
        context.abort(grpc.StatusCode.UNAVAILABLE, "a node that checks declines before this")

    def decline(self, request: pb.DeclineRequest, context: grpc.ServicerContext) -> pb.Ack:
        with self.lock:
            self.reasons.append(request.reason)
        return pb.Ack()

    def secagg(self, request: bytes, context: grpc.ServicerContext) -> pb.Ack:
        with self.lock:
            self.secagg_calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "no key exchange here")

    def handler(self) -> grpc.GenericRpcHandler:
        auth = pb.NodeAuth(node_id="n-1", token=b"t" * 32)

        def unary(reply: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: reply, response_serializer=lambda m: m.SerializeToString()
            )

        ser = {"response_serializer": lambda m: m.SerializeToString()}
        handlers = {
            "Join": unary(pb.JoinReply(auth=auth, run_id="r", heartbeat_interval_s=1.0)),
            "Heartbeat": unary(pb.HeartbeatReply(round=1, heartbeat_interval_s=1.0)),
            "Leave": unary(pb.Ack()),
            "DeclineTask": grpc.unary_unary_rpc_method_handler(
                self.decline, request_deserializer=pb.DeclineRequest.FromString, **ser
            ),
            "SecAggStep": grpc.unary_unary_rpc_method_handler(self.secagg, **ser),
            "PullTask": grpc.unary_stream_rpc_method_handler(self.pull, **ser),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


@pytest.mark.parametrize(
    ("variance", "extra", "named"),
    [
        (HONEST // 4, (), "that its own settings imply"),  # a quarter of the calibrated share
        (HONEST, ("--dp-min-noise-multiplier", "5"), "dp_min_noise_multiplier = 5"),
    ],
)
def test_a_node_declines_a_round_with_too_little_distributed_dp_noise(
    tmp_path: Path, variance: int, extra: tuple[str, ...], named: str
) -> None:
    # Prepare: the hostile coordinator on a loopback port
    fake = StingyNoiseCoordinator(variance)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((fake.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log = tmp_path / "node.log"

    # Execute: a node of a 1000-element model takes the task
    proc = start_node(
        f"127.0.0.1:{port}", "site", seed=0, task_args=TASK_ARGS, log=log, extra=extra
    )
    deadline = time.monotonic() + 60
    while not fake.reasons and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()
    wait_all([proc], timeout=30)
    server.stop(0).wait()

    # Assert: declined, the reason named; no key exchange was started
    assert fake.reasons, log.read_text()[-3000:]
    assert "distributed DP" in fake.reasons[0] and named in fake.reasons[0], fake.reasons
    assert fake.secagg_calls == 0
