"""The same Flower app two ways, as real processes on loopback: under Flower's own deployment
runtime (``flower-superlink``, ``flower-supernode`` with ``--node-config``, ``flwr run`` of the
app project in tests/flower_apps/project) and under fedhive (``fedhive server`` plus
``fedhive client --flower-app``). Used by tests/integration/test_flower_deployment.py and
benchmarks/flower_vs_fedhive.py.

Flower runs offline here: telemetry and the update check off, no runtime dependency installation
(``uv sync``), its home (``FLWR_HOME``: config.toml with the SuperLink connection, installed FABs)
in the work folder. The app's modules are this repository's ``tests.flower_apps.*``: every Flower
process gets the repository root on ``PYTHONPATH`` (the FAB carries only the project's
pyproject.toml). ``OMP_NUM_THREADS=1`` (and ``--threads 1`` on fedhive's nodes) makes training
use one thread, so both runs add floats in the same order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "tests" / "flower_apps" / "project"
CLIENT_APP = "tests.flower_apps.client_app:app"
INIT = "tests.flower_apps.task:Net"
FLOWER_TASK = "fedhive.common.tasks.flower:make_task"
CONNECTION = "local"  # the SuperLink connection's name in FLWR_HOME/config.toml
STOP_GRACE_S = 10.0
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float, log: Path) -> None:
    """Until ``port`` on loopback accepts a connection (or ``proc`` died, or the deadline)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before listening: {tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL_S)
    raise TimeoutError(f"nothing listens on {port} after {deadline_s} s: {tail(log)}")


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def spawn(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> Any:
    """A process in its own session (its children too: stop() ends the whole group)."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ),
            cwd=log.parent, start_new_session=True,
        )  # fmt: skip


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group started here, then SIGKILL what is left after the grace."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # the group's children (SuperExec, flwr-serverapp, flwr-clientapp) if any remain
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def flower_bin(name: str) -> str:
    """A flwr console script of this Python (the ``flower`` extra installs them)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: flwr's command {name} is not installed next to Python")
    return str(path)


# ---------------------------------------------------------------- Flower's deployment runtime


@dataclass
class FlowerRun:
    """A SuperLink and its SuperNodes; ``run()`` submits the project with ``flwr run``."""

    workdir: Path
    nodes: int
    threads: int = 1
    superexec_poll_s: float | None = None  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL (Flower's: 1 s)
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {
            **os.environ, "PYTHONPATH": path, "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": str(self.threads),
        }  # fmt: skip
        if self.superexec_poll_s is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(self.superexec_poll_s)
        return env

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        link_log = self.workdir / "superlink.log"
        link = spawn(
            [flower_bin("flower-superlink"), "--insecure", "--port", str(self.port),
             "--disable-runtime-dependency-installation"],
            link_log, self.env,
        )  # fmt: skip
        self.procs.append(link)
        for i in range(self.nodes):
            cmd = [
                flower_bin("flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions={self.nodes}",
            ]  # fmt: skip
            self.procs.append(spawn(cmd, self.workdir / f"supernode-{i}.log", self.env))
        wait_port(self.port, link, 60.0, link_log)

    def run(self, run_config: Mapping[str, Any]) -> subprocess.Popen[bytes]:
        """``flwr run PROJECT local --run-config ... --stream``: it exits when the run ends."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        return spawn(
            [flower_bin("flwr"), "run", str(PROJECT), CONNECTION, "--run-config", overrides,
             "--stream"],
            self.workdir / "flwr-run.log", self.env,
        )  # fmt: skip

    def stop(self) -> None:
        stop(self.procs)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of every Flower log here (SuperLink, SuperNodes, flwr run)."""
        logs = sorted(self.workdir.glob("*.log"))
        return "\n".join(f"== {log.name}\n{tail(log, chars)}" for log in logs)


def flower_metrics(final_model: Path) -> dict[str, dict[int, Any]]:
    """What the project's ServerApp saved next to its final model, by round: FedAvg's aggregated
    ``train`` and ``evaluate`` metrics, and the ``time`` each global model was ready."""
    saved = json.loads(Path(f"{final_model}.metrics.json").read_text())
    return {kind: {int(r): m for r, m in rounds.items()} for kind, rounds in saved.items()}


# ---------------------------------------------------------------- fedhive


def fedhive_server(
    workdir: Path,
    port: int,
    nodes: int,
    rounds: int,
    train: Mapping[str, Any],
    seed: int = 0,
    config: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``fedhive server`` for a Flower app: the initial model from the app's Net (seeded);
    ``config`` a TOML file of further settings."""
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--insecure", "--no-progress",
        "--address", f"127.0.0.1:{port}", "--run-dir", str(workdir / "run"),
        "--task", FLOWER_TASK, "--task-arg", f"init={INIT}", "--rounds", str(rounds),
        "--min-nodes", str(nodes), "--seed", str(seed),
    ]  # fmt: skip
    if config is not None:
        cmd += ["--config", str(config)]
    for key, value in train.items():
        cmd += ["--train", f"{key}={value}"]
    return spawn(cmd, workdir / "fedhive-server.log", {**os.environ, "PYTHONPATH": str(ROOT)})


def flower_node(
    address: str, app: str, index: int, log: Path, *extra: str, nodes: int = 2
) -> subprocess.Popen[bytes]:
    """``fedhive client --flower-app``: node ``index`` of ``nodes`` (plain text unless ``extra``
    names a bundle with --tls-dir)."""
    tls = ["--insecure"] if "--tls-dir" not in extra else []
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "client", "--server", address, *tls,
        "--name", f"site-{index}", "--device", "cpu", "--max-connect-attempts", "10",
        "--flower-app", app, "--task-arg", f"init={INIT}",
        "--task-arg", f"partition-id={index}", "--task-arg", f"num-partitions={nodes}", *extra,
    ]  # fmt: skip
    return spawn(cmd, log, {**os.environ, "PYTHONPATH": str(ROOT)})


def fedhive_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
