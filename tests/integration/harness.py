"""Helpers: an in-process coordinator on a real loopback gRPC port, real node processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fedhive.common.config import ServerConfig
from fedhive.server.app import RunningServer, start_server

CONSTANT_TASK = "fedhive.common.tasks.constant:make_task"


@dataclass
class CoordinatorThread:
    running: RunningServer
    thread: threading.Thread
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def join(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "coordinator run did not finish in time"
        if "error" in self.result:
            raise self.result["error"]
        history: list[dict[str, Any]] = self.result["history"]
        return history

    def wait_joined(self, name: str, timeout: float = 60.0) -> None:
        """Until a node named ``name`` has joined the run (raises after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not any(n.name == name for n in self.running.coordinator.nodes().values()):
            assert time.monotonic() < deadline, f"node {name} did not join in {timeout:g}s"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and the run; join the run's thread (idempotent)."""
        self.running.stop(grace=0.5)
        self.thread.join(STOP_JOIN_S)


STOP_JOIN_S = 30.0
# every coordinator started, stopped after the test (or module fixture) that started it
# (tests/integration/conftest.py): no gRPC server or run thread lives on into the next test, or
# into interpreter shutdown
STARTED: list[CoordinatorThread] = []


def stop_started(keep: int = 0) -> None:
    """Stop the coordinators started after the first ``keep``."""
    while len(STARTED) > keep:
        STARTED.pop().stop()


def start_coordinator(tmp_path: Path, listener: Any = None, **overrides: Any) -> CoordinatorThread:
    settings: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "run_dir": tmp_path / "run",
        "task": CONSTANT_TASK,
        "task_args": {"params": 1000, "tensors": 3},
        "rounds": 3,
        "min_nodes": 3,
        "round_timeout_s": 60.0,
        "join_timeout_s": 60.0,
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 10.0,
        "federated_evaluation": False,
        "progress": False,
        "insecure": True,
    }
    settings.update(overrides)
    config = ServerConfig(**settings)
    running = start_server(config, listener)
    holder = CoordinatorThread(running, threading.Thread(target=lambda: None))

    def target() -> None:
        try:
            holder.result["history"] = running.coordinator.run()
        except BaseException as exc:  # surfaced by join()
            holder.result["error"] = exc

    holder.thread = threading.Thread(target=target, name="coordinator", daemon=True)
    holder.thread.start()
    STARTED.append(holder)
    return holder


def start_node(
    address: str,
    name: str,
    seed: int,
    *,
    task: str = CONSTANT_TASK,
    task_args: dict[str, Any] | None = None,
    data: Path | None = None,
    log: Path | None = None,
    tls_dir: Path | None = None,
    max_connect_attempts: int = 10,
    device: str = "cpu",
    config: Path | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "fedhive.common.cli",
        "client",
        "--server",
        address,
        "--task",
        task,
        "--name",
        name,
        "--seed",
        str(seed),
        "--device",
        device,
        "--max-connect-attempts",
        str(max_connect_attempts),
    ]
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir is not None else ["--insecure"]
    for key, value in (
        task_args if task_args is not None else {"params": 1000, "tensors": 3}
    ).items():
        cmd += ["--task-arg", f"{key}={value}"]
    if data is not None:
        cmd += ["--data", str(data)]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += list(extra)
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> list[int]:
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 80 << 20),
            ("grpc.max_receive_message_length", 80 << 20),
        ],
    )
