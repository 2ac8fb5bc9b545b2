"""Wiring: config -> task -> initial model -> coordinator -> grpc.server; graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from types import FrameType
from typing import Any

import grpc
import numpy as np

from fedhive.common.chunks import MAX_CHUNK_SIZE
from fedhive.common.config import ServerConfig
from fedhive.common.task import Task, TaskContext, exchanged_state, load_task
from fedhive.common.tensors import (
    TensorSpec,
    raw_view,
    spec_of,
    tensor_bytes,
    tensor_from_bytes,
)
from fedhive.server.coordinator import Coordinator, RoundListener
from fedhive.server.servicer import CoordinatorServicer, generic_handler
from fedhive.server.store import RunStore

log = logging.getLogger("fedhive.server")

MESSAGE_OVERHEAD = 1 << 20


def grpc_options(chunk_size: int) -> list[tuple[str, Any]]:
    limit = max(chunk_size, 4 << 20) + MESSAGE_OVERHEAD
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", MAX_CHUNK_SIZE + MESSAGE_OVERHEAD),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


def initial_model(task: Task) -> tuple[list[TensorSpec], list[np.ndarray]]:
    model = task.build_model()
    state = exchanged_state(model, task)
    specs = [spec_of(name, t) for name, t in state.items()]
    arrays = [np.frombuffer(tensor_bytes(t), dtype=np.uint8).copy() for t in state.values()]
    return specs, arrays


def task_evaluator(task: Task, config: Mapping[str, Any]) -> Any:
    """Server-side evaluation on held-out data: load the new global model into a task model."""
    import torch

    model = task.build_model()

    def evaluate(
        round_: int, specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]
    ) -> Mapping[str, float] | None:
        state = exchanged_state(model, task)
        with torch.no_grad():
            for spec, arr in zip(specs, arrays, strict=True):
                state[spec.name].copy_(tensor_from_bytes(spec, raw_view(arr)))
        result = task.evaluate(model, {**config, "round": round_})
        if result is None:
            return None
        return {"examples": float(result.num_examples), **result.metrics}

    return evaluate


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    coordinator: Coordinator

    def stop(self, grace: float = 2.0) -> None:
        self.coordinator.stop()
        self.server.stop(grace).wait()


def start_server(config: ServerConfig, listener: RoundListener | None = None) -> RunningServer:
    """Load the task, create the run directory and serve; the caller runs ``coordinator.run()``."""
    task = load_task(
        config.task,
        TaskContext(
            role="server",
            data_dir=config.eval_data,
            device=config.device,
            seed=config.seed,
            args=config.task_args,
        ),
    )
    specs, arrays = initial_model(task)
    store = RunStore(config.run_dir)
    store.create(config.model_dump_json(indent=2))
    evaluator = task_evaluator(task, config.train) if config.eval_data is not None else None
    coordinator = Coordinator(config, specs, arrays, store, evaluator=evaluator, listener=listener)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="fedhive-rpc"
        ),
        options=grpc_options(config.chunk_size),
        maximum_concurrent_rpcs=config.max_workers,
    )
    server.add_generic_rpc_handlers((generic_handler(CoordinatorServicer(coordinator)),))
    port = server.add_insecure_port(config.address)
    if port == 0:
        raise OSError(f"cannot listen on {config.address}")
    server.start()
    log.info(
        "coordinator listening on port %d (run %s, %d tensors, %.1f MB, run dir %s)",
        port,
        coordinator.run_id,
        len(specs),
        coordinator.model_bytes / 1e6,
        config.run_dir,
    )
    return RunningServer(server, port, coordinator)


def serve(config: ServerConfig, listener: RoundListener | None = None) -> list[dict[str, Any]]:
    """Start, run every round, stop. SIGTERM/SIGINT stop the run cleanly."""
    running = start_server(config, listener)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.warning("signal %d: stopping", signum)
        running.coordinator.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        return running.coordinator.run()
    finally:
        running.stop()
