"""Helpers for a standing federation over real processes: a `fedhive service`, standing nodes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedhive.common.cli.certs import Authority
from fedhive.common.config import ServerConfig
from fedhive.proto.v1 import control_pb2 as cpb
from fedhive.server.service.service import Service
from tests.integration.adversary import Adversary

CONSTANT = "fedhive.common.tasks.constant:make_task"
DIGITS = "fedhive.common.tasks.digits:make_task"
CONSTANT_ARGS = {"params": 1000, "tensors": 3}
CLI = [sys.executable, "-m", "fedhive.common.cli"]
STOP = "/fedhive.proto.v1.Control/StopRun"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_toml(path: Path, settings: Mapping[str, Any]) -> Path:
    """Flat settings, plus tables for Mapping values whose keys are task paths (``tasks``)."""
    lines, tables = [], []
    for key, value in settings.items():
        if key == "tasks":
            for task, approved in value.items():
                tables.append(f'[tasks."{task}"]')
                tables += [f"{k} = {toml_value(v)}" for k, v in approved.items()]
        else:
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


def run_settings(task: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "task": task,
        "federated_evaluation": False,
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 10.0,
        "join_timeout_s": 120.0,
        "round_timeout_s": 60.0,
    }
    if task == CONSTANT:
        settings["task_args"] = CONSTANT_ARGS
    settings.update(extra)
    return settings


def start_service(
    state: Path,
    port: int,
    log: Path,
    submit: list[Path] = (),
    tls_dir: Path | None = None,  # type: ignore[assignment]
) -> subprocess.Popen[bytes]:
    cmd = [*CLI, "service", "--state-dir", str(state), "--address", f"127.0.0.1:{port}"]
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir is not None else ["--insecure"]
    for path in submit:
        cmd += ["--submit", str(path)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def start_standing_node(
    tmp_path: Path,
    port: int,
    name: str,
    tasks: Mapping[str, Mapping[str, Any]],
    *,
    seed: int = 0,
    tls_dir: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    settings: dict[str, Any] = {
        "server": f"127.0.0.1:{port}",
        "name": name,
        "device": "cpu",
        "seed": seed,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "poll_wait_s": 2.0,
        "max_connect_attempts": 400,
    }
    if tls_dir is not None:
        settings["tls_dir"] = tls_dir
    else:
        settings["insecure"] = True
    settings["tasks"] = tasks
    config = write_toml(tmp_path / f"{name}.toml", settings)
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "client", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    return proc, log


def queue_rows(state: Path) -> list[tuple[str, str, str]]:
    """(run_id, state, reason) of every run, in queue order ([] before the queue exists)."""
    path = state / "service.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT run_id, state, reason FROM runs ORDER BY seq").fetchall()
    except sqlite3.Error:
        return []
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def wait_for(predicate: Any, timeout: float, what: str, *procs: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"exited while waiting for {what}: {dead}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Running:
    service: Service
    pki: Authority
    state: Path

    def channel(self, folder: Path, who: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            self.pki.ca_cert.read_bytes(),
            (folder / f"{who}.key").read_bytes(),
            (folder / f"{who}.crt").read_bytes(),
        )
        return grpc.secure_channel(f"127.0.0.1:{self.service.port}", creds)

    def stop_run(self, run_id: str, reason: str) -> grpc.Future:
        channel = self.channel(self.pki.admin_dir("alice"), "admin")
        call = channel.unary_unary(
            STOP,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=cpb.RunInfo.FromString,
        )
        return call.future(cpb.StopRunRequest(run_id=run_id, reason=reason), timeout=30)

    def node(self, name: str) -> Adversary:
        return Adversary(self.channel(self.pki.node_dir(name), "node"), name)


@contextlib.contextmanager
def in_process_service(
    tmp_path: Path, revoked: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None
) -> Iterator[Running]:
    """A coordinator service in this process over mutual TLS (sites a and b, administrator
    alice; the ``revoked`` nodes' certificates issued, then revoked), its driver in a thread;
    stopped and joined on exit. ``allowed``: the service's allow-list."""
    pki = Authority(tmp_path / "pki")
    sites = ["site-a", "site-b", *revoked]
    pki.bootstrap("Test Consortium", sites, dns=["localhost"], ips=["127.0.0.1"])
    pki.issue_admin("alice")
    for name in revoked:
        pki.revoke(name)
    base = ServerConfig(
        address="127.0.0.1:0", tls_dir=pki.server_dir, progress=False, allowed_nodes=allowed
    )
    service = Service(base, tmp_path / "state")
    service.start()
    driver = threading.Thread(target=service.serve, name="service driver")
    driver.start()
    try:
        yield Running(service, pki, tmp_path / "state")
    finally:
        service.request_stop()
        service.stop(grace=0.5)
        driver.join(30)
