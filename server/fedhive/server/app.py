"""Wiring: config -> task -> initial model -> coordinator -> grpc.server; graceful stop."""

from __future__ import annotations

import atexit
import contextlib
import logging
import secrets
import signal
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor  # its exit hook is registered before ours
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedhive.common.api.task import Task, TaskContext, exchanged_state, load_task, validate_config
from fedhive.common.config import ServerConfig
from fedhive.common.data.safetensors_io import SafetensorsFile
from fedhive.common.errors import ConfigError, TaskError
from fedhive.common.record import RoundRecord
from fedhive.common.runtime.memory import startup_gc
from fedhive.common.wire.chunks import MAX_CHUNK_SIZE
from fedhive.common.wire.tensors import (
    TensorSpec,
    raw_view,
    spec_of,
    tensor_bytes,
    tensor_from_bytes,
)
from fedhive.server.coordinator import Coordinator, RoundListener
from fedhive.server.identity import PeerGate, ServerTls, server_credentials, server_tls
from fedhive.server.limits import Watchdog
from fedhive.server.pipeline import wrap_stages
from fedhive.server.privacy.central import wrap_central
from fedhive.server.servicer import SERVICE, CoordinatorServicer, generic_handler
from fedhive.server.store import RunStore, StoreError
from fedhive.server.strategy.base import Aggregator
from fedhive.server.strategy.registry import build_strategy, sum_only

log = logging.getLogger("fedhive.server")

MESSAGE_OVERHEAD = 1 << 20


def grpc_options(config: ServerConfig) -> list[tuple[str, Any]]:
    limit = max(config.chunk_size, 4 << 20) + MESSAGE_OVERHEAD
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", MAX_CHUNK_SIZE + MESSAGE_OVERHEAD),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    if config.receive_window_bytes is not None:
        # A fixed per-stream window instead of gRPC's auto-tuning (BDP probes grow it to many MB
        # on a fast link): what an upload held back by the spool buffers here stays bounded.
        options += [
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", config.receive_window_bytes),
        ]
    return options


def initial_model(task: Task) -> tuple[list[TensorSpec], list[np.ndarray]]:
    model = task.build_model()
    state = exchanged_state(model, task)
    specs = [spec_of(name, t) for name, t in state.items()]
    # views of the tensors' storage, not copies: the model itself is dropped on return, so the
    # coordinator holds the initial model once (a 2 GB model does not cost 4 GB at start-up)
    arrays = [np.frombuffer(tensor_bytes(t), dtype=np.uint8) for t in state.values()]
    return specs, arrays


def check_train_config(task: Task, config: ServerConfig) -> None:
    """Refuse, before the run is created, a ``[train]`` table the nodes' task would refuse."""
    example = {**config.train, "round": 1, "evaluate": config.federated_evaluation}
    try:
        validate_config(task, example)
    except TaskError as exc:
        raise ConfigError(f"[train] is not valid for the task {config.task}: {exc}") from exc


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


def load_model(path: Path, specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """A committed model file, checked against the task's model, as flat byte arrays."""
    stored = SafetensorsFile(path)
    try:
        if stored.specs != list(specs):
            raise StoreError(
                f"{path} does not hold this task's model (tensor names, dtypes or shapes "
                "differ): resume with the same task and task_args"
            )
        return [np.frombuffer(buf, dtype=np.uint8).copy() for buf in stored.buffers()]
    finally:
        stored.close()


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    coordinator: Coordinator
    health: health.HealthServicer
    watchdog: Watchdog | None = None  # started with the server, stopped after it
    status: Any = None  # the status page and metrics (fedhive.server.status.wiring.StatusPart)

    def stop(self, grace: float = 2.0) -> None:
        _LIVE.pop(id(self), None)
        self.health.enter_graceful_shutdown()
        self.coordinator.stop()
        self.server.stop(grace).wait()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.status is not None:
            self.status.stop()


# Servers started in this process and not stopped by their owner yet: stopped when the main thread
# ends, before Python joins the other threads. Otherwise concurrent.futures shuts the RPC thread
# pool down first, gRPC's serving thread dies on its next event ("cannot schedule new futures"), an
# RPC still open waits forever, and the process hangs on exit; or gRPC is still running while the
# interpreter and the native libraries tear down (SIGABRT, "terminate called ...").
_LIVE: weakref.WeakValueDictionary[int, RunningServer] = weakref.WeakValueDictionary()
EXIT_GRACE_S = 0.5


def _stop_live_servers() -> None:
    for running in list(_LIVE.values()):
        running.stop(EXIT_GRACE_S)


# threading's exit hooks run last-registered first and before the non-daemon threads are joined;
# concurrent.futures (ThreadPoolExecutor, imported above) registered its pool shutdown already
getattr(threading, "_register_atexit", atexit.register)(_stop_live_servers)


def serve_health(server: grpc.Server) -> health.HealthServicer:
    """The gRPC health-checking service: SERVING for "" and the coordinator while the run lives."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", SERVICE):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def check_strategy(config: ServerConfig) -> Aggregator:
    """The run's strategy, built before the run is created: refused if it cannot be built with its
    arguments or cannot run under the run's secure aggregation, or if a ``[pipeline]`` stage
    cannot be imported and built (fedhive.server.pipeline)."""
    aggregator = build_strategy(config.strategy, config.strategy_args, config.run_dir / "updates")
    if config.secure_aggregation != "none" and not sum_only(config.strategy):
        raise ConfigError(
            f"strategy = {config.strategy!r} must see each update, but secure_aggregation = "
            f"{config.secure_aggregation!r} shows the coordinator only their sum: choose a rule "
            "that needs only the sum (fedavg, fedavgm, fedadam, fedyogi, fedadagrad) or no secure "
            "aggregation"
        )
    # the user's update stages run outside central DP: before its clip, which they cannot undo
    return wrap_stages(config, wrap_central(config, aggregator, sum_only(config.strategy)))


def prepare_run(
    config: ServerConfig,
    listener: RoundListener | None = None,
    run_id: str | None = None,
    gate: PeerGate | None = None,
) -> Coordinator:
    """Load the task, check the run's settings, create (or reopen) its run directory: the run's
    coordinator, ready for ``run()``. ``run_id``: a new run's id (default: a fresh one)."""
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
    check_train_config(task, config)
    aggregator = check_strategy(config)
    specs, arrays = initial_model(task)
    store = RunStore(config.run_dir)
    settings = config.model_dump(mode="json")
    resume = None
    run_id = run_id or secrets.token_hex(8)
    if store.exists():
        resume = store.open_existing(settings)
        run_id = resume.run_id
        if resume.model_path is None:
            resume = None
        else:
            arrays = []  # release the task's initial weights before loading the checkpoint
            arrays = load_model(resume.model_path, specs)
    else:
        store.create(settings, run_id)
    evaluator = task_evaluator(task, config.train) if config.eval_data is not None else None
    return Coordinator(
        config,
        specs,
        arrays,
        store,
        aggregator=aggregator,
        evaluator=evaluator,
        listener=listener,
        run_id=run_id,
        resume=resume,
        identity_verifier=gate.verify_identity if gate is not None else None,
    )


def make_server(config: ServerConfig) -> grpc.Server:
    return grpc.server(
        ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="fedhive-rpc"),
        options=grpc_options(config),
        maximum_concurrent_rpcs=config.max_workers,
    )


def listen(server: grpc.Server, config: ServerConfig, tls: ServerTls | None) -> int:
    """Open the port (mutual TLS, or plain text: loudly); raises OSError if it cannot."""
    if tls is None:
        port = server.add_insecure_port(config.address)
        log.warning(
            "INSECURE MODE: plain-text gRPC on %s, no TLS, no node certificates; any host that "
            "reaches this port can join the run. Use it only for local tests.",
            config.address,
        )
    else:
        port = server.add_secure_port(config.address, server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot listen on {config.address}")
    return port


def start_server(config: ServerConfig, listener: RoundListener | None = None) -> RunningServer:
    """Load the task, create the run directory and serve; the caller runs ``coordinator.run()``."""
    tls = server_tls(config)
    gate = PeerGate.from_config(config, tls) if tls is not None else None
    status = None
    if config.status is not None:  # off by default; its metrics listen beside the progress
        from fedhive.server.status import status_part

        status = status_part(config)
        listener = status.listener(listener)
    coordinator = prepare_run(config, listener, gate=gate)
    specs = coordinator.specs
    server = make_server(config)
    watchdog = Watchdog()
    servicer = CoordinatorServicer(coordinator, gate, watchdog)
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    health_servicer = serve_health(server)
    port = listen(server, config, tls)
    server.start()
    watchdog.start()
    running = RunningServer(server, port, coordinator, health_servicer, watchdog, status)
    if status is not None:
        try:
            status.start(coordinator)
        except BaseException:
            running.stop(0)
            raise
    log.info(
        "coordinator listening on port %d with %s (run %s, %d tensors, %.1f MB, run dir %s)",
        port,
        "plain text" if tls is None else f"mutual TLS (CA {tls.ca}, CRL {tls.crl or 'none'})",
        coordinator.run_id,
        len(specs),
        coordinator.model_bytes / 1e6,
        config.run_dir,
    )
    _LIVE[id(running)] = running
    return running


def serve(
    config: ServerConfig, listener: RoundListener | None = None, *, freeze_startup: bool = False
) -> list[RoundRecord]:
    """Start, run every round, stop. SIGTERM/SIGINT stop the run cleanly. ``freeze_startup``
    (the ``fedhive server`` command): start up without cyclic GC, then freeze what start-up built
    (:func:`fedhive.common.runtime.memory.startup_gc`; not for a process that serves repeatedly)."""
    with startup_gc() if freeze_startup else contextlib.nullcontext():
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
