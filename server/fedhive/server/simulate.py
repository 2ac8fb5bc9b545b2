"""``fedhive simulate``: a coordinator and N real node processes on loopback, real gRPC.

Data: if the task module defines ``prepare_simulation(root, nodes, alpha, seed)`` it writes each
node's private data (non-IID: Dirichlet label skew with ``alpha``; ``--iid`` for an even split)
and the coordinator's held-out set, and returns ``(server_data_dir, [node_data_dir, ...])``.

Mutual TLS as in production: a throwaway consortium CA, the coordinator's certificate and one
certificate per node are made in ``WORKDIR/pki`` (``--insecure`` for plain text instead).

``fedhive prepare`` is the data step alone (the compose file's one-shot data service).
``--shards K`` asks for the pathological split (K label-sorted shards per node) from a
``prepare_simulation`` that takes ``shards_per_node`` (the built-in tasks do).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedhive.common.cli.certs import Authority
from fedhive.common.cli.helptext import plain
from fedhive.common.cli.logs import setup_logging
from fedhive.common.config import FLOWER_TASK
from fedhive.common.errors import FedhiveError
from fedhive.common.record import RoundRecord
from fedhive.common.runtime.cpus import usable_cpus
from fedhive.server.cli import add_server_args, config_from_args

log = logging.getLogger("fedhive.simulate")

DEFAULT_TASK = "fedhive.common.tasks.digits:make_task"
HIST_LABEL = 9  # width of the row label of fedhive.common.data.partition.format_histogram


def prepare_data(
    task: str,
    root: Path,
    nodes: int,
    alpha: float | None,
    seed: int,
    shards_per_node: int | None = None,
) -> tuple[Path | None, list[Path | None]]:
    module = importlib.import_module(task.partition(":")[0])
    prepare = getattr(module, "prepare_simulation", None)
    if prepare is None:
        return None, [None] * nodes
    if shards_per_node is not None:
        if "shards_per_node" not in inspect.signature(prepare).parameters:
            raise FedhiveError(f"{task}: prepare_simulation does not support --shards")
        server_dir, node_dirs = prepare(root, nodes, alpha, seed, shards_per_node=shards_per_node)
    else:
        server_dir, node_dirs = prepare(root, nodes, alpha, seed)
    return server_dir, list(node_dirs)


def node_command(
    address: str,
    task: str,
    data: Path | None,
    name: str,
    seed: int,
    task_args: list[str],
    tls_dir: Path | None = None,
    device: str = "cpu",
) -> list[str]:
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
        "20",
    ]
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir is not None else ["--insecure"]
    if data is not None:
        cmd += ["--data", str(data)]
    for item in task_args:
        cmd += ["--task-arg", item]
    return cmd


def flower_node_args(app: str | None, index: int, nodes: int) -> list[str]:
    """A simulated Flower node's task args: its app and the node_config keys Flower's simulation
    gives each node (partition-id, num-partitions)."""
    if app is None:
        return []
    return [f"app={app}", f"partition-id={index}", f"num-partitions={nodes}"]


def add_split_args(p: argparse.ArgumentParser) -> None:
    """How the task's data is split across the nodes (`fedhive simulate` and `fedhive prepare`)."""
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet label-skew parameter: smaller is more skewed (default 0.5)",
    )
    p.add_argument("--iid", action="store_true", help="split the data evenly instead")
    p.add_argument(
        "--shards",
        type=int,
        metavar="K",
        help="pathological split instead: K label-sorted shards per node (default none)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fedhive simulate",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_args(p, simulate=True)
    p.add_argument("--nodes", type=int, default=4, help="node processes to start (default 4)")
    add_split_args(p)
    p.add_argument(
        "--workdir",
        type=Path,
        help="where data, certificates, logs and the run go (default runs/simulate-DATE-TIME)",
    )
    p.add_argument(
        "--node-device",
        default="cpu",
        help="device every node trains on: cpu (default), cuda, cuda:1, auto (the nodes share it)",
    )
    p.add_argument(
        "--flower-app",
        metavar="MODULE:APP",
        help="run an unchanged Flower ClientApp (or legacy client_fn) on every node, node i with "
        "node_config partition-id=i, num-partitions=NODES; give the initial model with "
        "--task-arg init=MODULE:NAME (default none; README: Coming from Flower)",
    )
    ns = p.parse_args(argv)
    setup_logging(ns.log_level)
    if ns.nodes < 1:
        print("fedhive simulate: --nodes must be >= 1", file=sys.stderr)
        return 2
    if ns.flower_app is not None:
        if ns.task not in (None, FLOWER_TASK):
            print(
                f"fedhive simulate: --flower-app runs the task {FLOWER_TASK}: drop --task",
                file=sys.stderr,
            )
            return 2
        ns.task = FLOWER_TASK
    workdir = ns.workdir or Path("runs") / f"simulate-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        base = config_from_args(ns)
        server_data, node_data = prepare_data(
            base.task,
            workdir / "data",
            ns.nodes,
            None if ns.iid else ns.alpha,
            base.seed,
            ns.shards,
        )
        extra: dict[str, Any] = {
            "address": ns.address or "127.0.0.1:0",
            "run_dir": ns.run_dir or workdir / "run",
            "min_nodes": ns.min_nodes or ns.nodes,
            "eval_data": ns.eval_data or server_data,
        }
        names = [f"node-{i}" for i in range(ns.nodes)]
        pki = None
        if not base.insecure:
            if base.tls_cert is not None:
                raise FedhiveError("fedhive simulate makes its own certificates: drop --tls-*")
            pki = Authority(workdir / "pki")
            pki.bootstrap("fedhive simulation", names, dns=["localhost"], ips=["127.0.0.1"])
            extra["tls_dir"] = pki.server_dir
        config = config_from_args(ns, **extra)
    except FedhiveError as exc:
        print(f"fedhive simulate: {exc}", file=sys.stderr)
        return 2
    from rich.markup import escape

    from fedhive.server.app import start_server
    from fedhive.server.coordinator import RunAborted
    from fedhive.server.progress import RichProgress, make_console, summary_table

    console = make_console()
    progress = RichProgress(config.rounds, console)
    try:  # the task and the run's settings are checked here: a bad one stops before any node
        running = start_server(config, progress)
    except FedhiveError as exc:
        print(f"fedhive simulate: {exc}", file=sys.stderr)
        return 2
    address = f"127.0.0.1:{running.port}"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # N training processes share this machine's cores: no oversubscription
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus().count // ns.nodes)))
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(ns.nodes):
        out = open(logs / f"node-{i}.log", "wb")  # noqa: SIM115 - lives as long as the process
        tls_dir = pki.node_dir(names[i]) if pki is not None else None
        cmd = node_command(
            address,
            config.task,
            node_data[i],
            names[i],
            base.seed + i,
            ns.task_arg + flower_node_args(ns.flower_app, i, ns.nodes),
            tls_dir,
            ns.node_device,
        )
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
    console.print(f"coordinator on {address}; {ns.nodes} node processes (logs in {logs})")
    code = 0
    history: list[RoundRecord] | None = None
    try:
        with progress if config.progress else contextlib.nullcontext():
            history = running.coordinator.run()
    except RunAborted as exc:
        console.print(f"[red]run aborted:[/red] {escape(str(exc))}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        if history is None:
            running.stop()  # no FINISH to wait for: the nodes give up on their own
        for proc in procs:  # the nodes leave (and the log says so) before the summary
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        running.stop()
    if history is not None:
        console.print(summary_table(history))
    failed = [i for i, proc in enumerate(procs) if proc.returncode not in (0, -15)]
    if failed and code == 0:
        console.print(f"[yellow]node processes {failed} exited with errors; see {logs}")
    console.print(f"run directory: {config.run_dir}")
    return code


def relabel(report: str, names: list[str], staging: Path, out: Path) -> str:
    """What a task's ``prepare_simulation`` printed, with the node ids for its node-i rows and
    the final folders for the staging ones."""
    width = max(HIST_LABEL, *(len(n) + 1 for n in names))
    lines = []
    for line in report.replace(str(staging), str(out)).splitlines():
        head, rest = line[:HIST_LABEL], line[HIST_LABEL:]
        label = head.strip()
        if label.startswith("node-") and label[5:].isdigit() and int(label[5:]) < len(names):
            line = names[int(label[5:])].ljust(width) + rest
        elif label == "node" and rest.startswith(" "):
            line = "node".ljust(width) + rest
        lines.append(line)
    return "\n".join(lines)


def prepare_main(argv: list[str] | None = None) -> int:
    """`fedhive prepare`: write the coordinator's held-out set and one folder per node."""
    p = argparse.ArgumentParser(prog="fedhive prepare", description=prepare_main.__doc__)
    p.add_argument(
        "--out", type=Path, required=True, help="OUT/server and OUT/<node id> are written"
    )
    p.add_argument(
        "--nodes",
        action="append",
        required=True,
        metavar="ID[,ID...]",
        help="node ids, comma-separated or repeated: one folder each",
    )
    p.add_argument(
        "--task",
        default=DEFAULT_TASK,
        help=f"task whose prepare_simulation() writes the data (default {DEFAULT_TASK})",
    )
    add_split_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    ns = p.parse_args(argv)
    names = [v.strip() for item in ns.nodes for v in item.split(",") if v.strip()]
    if not names or len(set(names)) != len(names):
        print(f"fedhive prepare: --nodes needs distinct ids, got {names}", file=sys.stderr)
        return 2
    staging = ns.out / ".staging"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            server_dir, dirs = prepare_data(
                ns.task, staging, len(names), None if ns.iid else ns.alpha, ns.seed, ns.shards
            )
    except (ImportError, ValueError, FedhiveError) as exc:
        print(f"fedhive prepare: {exc}", file=sys.stderr)
        return 2
    if server_dir is None:
        print(f"fedhive prepare: task {ns.task} has no prepare_simulation()", file=sys.stderr)
        return 2
    for name, src in [("server", server_dir), *zip(names, dirs, strict=True)]:
        assert src is not None
        target = ns.out / name
        if target.exists():
            shutil.rmtree(target)
        src.replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    if printed.getvalue().strip():
        print(relabel(printed.getvalue(), names, staging, ns.out))
    print(f"data for {', '.join(names)} and the coordinator in {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
