"""docker/compose.yaml run for real, without containers.

Every service's command and environment are read from the compose file (anchors resolved by
PyYAML, ``${VAR:-default}`` interpolated), each named volume becomes a folder (a ``subpath``
mount its sub-folder), each config (``content``) a file, container paths in the commands and in
the configs are mapped to those folders and files (a config is read with the mounts of the
service that mounts it, the run settings with the coordinator's: it reads them), and the
services start as separate processes in ``depends_on`` order: the one-shots run to completion,
the coordinator service must pass the Dockerfile's HEALTHCHECK command, then the standing nodes
and the administrator's one-shot ``submit`` start; once its run has finished, ``submit`` runs
again, as a second ``docker compose up`` would, and queues nothing (the run is named). Mutual TLS
is on, with the certificates (and the administrator's, and the status page's token) the certs
service made. The coordinator and the nodes stay up: once the submitted run has finished they
are stopped with SIGTERM, as ``docker compose stop`` does, and must exit 0.

Network: ``netns`` puts the coordinator and each other service in its own network namespace on
a bridge, with ``coordinator`` resolving to the coordinator's address, so the compose commands
run verbatim over a real network (root and ``ip`` needed, else skipped); ``loopback`` rewrites
the coordinator's address (and the status page's port) to free loopback ports instead, and also
reads the status page's /metrics with and without its token.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.netns import Network
from tests.integration.standing import queue_rows

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
QUOTED_PATH = re.compile(r'"(/[^"]*)"')
READ_BY = {"rehearsal": "coordinator"}  # a config read by another service than its mounter


def interpolate(value: str, env: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def mounts(service: dict[str, Any], volumes: Path) -> dict[str, Path]:
    """Container path -> host folder, for the service's named-volume mounts."""
    out = {}
    for item in service.get("volumes", []):
        if isinstance(item, str):
            source, target = item.split(":")[:2]
            subpath = ""
        else:
            source, target = item["source"], item["target"]
            subpath = item.get("volume", {}).get("subpath", "")
        out[target] = volumes / source / subpath
    return out


def write_configs(
    spec: dict[str, Any],
    volumes: Path,
    env: dict[str, str],
    edits: dict[str, str],
) -> dict[str, dict[str, Path]]:
    """Each service's config mounts (container path -> file), the files written with their
    content interpolated, ``edits`` applied and container paths mapped."""
    services: dict[str, Any] = spec["services"]
    folder = volumes.parent / "configs"
    folder.mkdir(exist_ok=True)
    out: dict[str, dict[str, Path]] = {}
    for name, service in services.items():
        for item in service.get("configs", []):
            source = item["source"]
            reader = services[READ_BY.get(source, name)]
            text = interpolate(spec["configs"][source]["content"], env)
            for old, new in edits.items():
                text = text.replace(old, new)
            paths = mounts(reader, volumes)
            text = QUOTED_PATH.sub(lambda m: json.dumps(host_path(m.group(1), paths)), text)  # noqa: B023
            path = folder / f"{name}-{source}.toml"
            path.write_text(text)
            out.setdefault(name, {})[item["target"]] = path
    return out


def host_path(arg: str, mapping: dict[str, Path]) -> str:
    for target in sorted(mapping, key=len, reverse=True):
        if arg == target or arg.startswith(target + "/"):
            return str(mapping[target]) + arg[len(target) :]
    return arg


def command(
    argv: list[str], mapping: dict[str, Path], env: dict[str, str], addresses: dict[str, str]
) -> list[str]:
    args = [host_path(addresses.get(a, a), mapping) for a in (interpolate(a, env) for a in argv)]
    return [sys.executable, "-m", "fedhive.common.cli", *args]


def healthcheck() -> list[str]:
    lines = DOCKERFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    text = " ".join(line.rstrip("\\") for line in lines[start : start + 2])
    cmd: list[str] = json.loads(text.split(" CMD ", 1)[1])
    assert cmd[0] == "fedhive"
    return cmd[1:]


def dependency_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [
            n
            for n, s in services.items()
            if n not in order and all(d in order for d in s.get("depends_on", {}))
        ]
        assert ready, "depends_on has a cycle"
        order.extend(sorted(ready))
    return order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["netns", "loopback"])
def network(request: pytest.FixtureRequest) -> Any:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    if request.param == "loopback":
        yield None
        return
    net = Network.create(sorted(n for n, s in services.items() if "depends_on" in s))
    if net is None:
        pytest.skip("network namespaces need root and a working `ip netns`")
    try:
        yield net
    finally:
        net.destroy()


def metrics(port: int, ca: Path, token: str | None) -> tuple[int, str]:
    """GET the status page's /metrics over HTTPS: (status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers=headers)
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_until(predicate: Any, timeout: float, what: str, procs: dict[str, Any]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
        assert not dead, f"exited while waiting for {what}: {dead}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_compose_topology_runs_as_processes_with_mutual_tls(
    tmp_path: Path, network: Network | None
) -> None:
    # Prepare: the compose file's services, 3 rounds, on namespaces or loopback
    spec = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = spec["services"]
    addresses: dict[str, str] = {}
    edits: dict[str, str] = {}
    status_port = 8080
    if network is None:
        here = f"127.0.0.1:{free_port()}"
        addresses = dict.fromkeys(["0.0.0.0:8765", "coordinator:8765", "127.0.0.1:8765"], here)
        status_port = free_port()
        edits = {"port = 8080": f"port = {status_port}"}

    def wrap(name: str, argv: list[str]) -> list[str]:
        if network is None or name not in network.namespaces:
            return argv
        return network.wrap(name, argv)

    variables = {"FEDHIVE_ROUNDS": "3"}
    volumes = tmp_path / "volumes"
    for name in spec["volumes"]:
        (volumes / name).mkdir(parents=True)
    configs = write_configs(spec, volumes, variables, edits)
    conditions = {
        dep: cond["condition"]
        for s in services.values()
        for dep, cond in s.get("depends_on", {}).items()
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    commands: dict[str, list[str]] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    state = volumes / "state"
    nodes = sorted(n for n in services if n.startswith("node-"))
    standing = ["coordinator", *nodes]

    # Execute: bring it up; the administrator's submit queues the rehearsal run; once it has
    # finished, submit again (a second `up`), read the status page, then stop the standing
    # services as `docker compose stop`
    try:
        for name in dependency_order(services):
            service = services[name]
            mapping = {**mounts(service, volumes), **configs.get(name, {})}
            service_env = service.get("environment", {}).items()
            env = {**os.environ, **{k: interpolate(str(v), variables) for k, v in service_env}}
            cmd = wrap(name, command(service["command"], mapping, variables, addresses))
            commands[name] = cmd
            with open(logs / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            if conditions.get(name) == "service_completed_successfully":
                assert procs[name].wait(timeout=120) == 0, (logs / f"{name}.log").read_text()
            elif conditions.get(name) == "service_healthy":
                probe = wrap(name, command(healthcheck(), mapping, variables, addresses))
                deadline = time.monotonic() + 120
                while subprocess.run(probe, capture_output=True, timeout=60).returncode != 0:
                    assert procs[name].poll() is None, (logs / f"{name}.log").read_text()
                    assert time.monotonic() < deadline, "the coordinator never became healthy"
                    time.sleep(0.5)
        assert procs["submit"].wait(timeout=120) == 0, (logs / "submit.log").read_text()
        wait_until(
            lambda: [s for _, s, _ in queue_rows(state)] == ["finished"], 300, "the run", procs
        )
        again = subprocess.run(commands["submit"], capture_output=True, text=True, timeout=60)
        alive = {name: procs[name].poll() is None for name in standing}
        token = (volumes / "pki" / "status" / "status.token").read_text().strip()
        ca = volumes / "pki" / "ca" / "ca.crt"
        scraped = metrics(status_port, ca, token) if network is None else (200, "")
        anonymous = metrics(status_port, ca, None) if network is None else (401, "")
        for name in standing[::-1]:
            procs[name].send_signal(signal.SIGTERM)
        codes = {name: proc.wait(timeout=60) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # Assert: the standing services outlived the run and left cleanly; every one-shot exited 0,
    # the second submit too, without queueing the rehearsal again;
    # 3 rounds with the 3 sites in the run's directory under the service's state; the status
    # page answers only with its token
    text = {name: (logs / f"{name}.log").read_text() for name in procs}
    assert alive == dict.fromkeys(standing, True), text
    assert codes == dict.fromkeys(procs, 0), text
    assert len(nodes) == 3
    ((run_id, _, _),) = queue_rows(state)
    assert text["submit"].startswith(f'run {run_id} "rehearsal" ')
    assert "by admin:ops" in text["submit"]
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == (
        f"run rehearsal already submitted as {run_id} (finished): not submitted again\n"
    )
    run = state / "runs" / run_id
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3]
    assert all(e["committed"] and e["reported"] == ["site-1", "site-2", "site-3"] for e in rounds)
    assert "accuracy" in rounds[-1]["server_evaluate"]
    assert events[-1]["event"] == "finished"
    models = sorted(p.name for p in (run / "models").iterdir())
    assert models == [f"round-{r:04d}.safetensors" for r in range(4)]
    assert "mutual TLS" in text["coordinator"]
    assert (scraped[0] == 200 and "fedhive_rounds_committed_total 3.0" in scraped[1]) or network
    assert anonymous[0] == 401
    with sqlite3.connect(f"file:{state / 'service.sqlite'}?mode=ro", uri=True) as db:
        audit = db.execute("SELECT caller, action FROM audit").fetchall()
    assert audit.count(("admin:ops", "submit")) == 2
    if network is not None:  # the nodes came over the bridge, each from its own address
        for n in nodes:
            assert f"join from ipv4:{network.addresses[n]}:" in text["coordinator"], text

    assert all("identity site-" in text[n] for n in nodes)
