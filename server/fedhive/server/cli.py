"""``fedhive server``: run a coordinator for one federated run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedhive.common.config import ServerConfig, build_config, parse_assignments
from fedhive.common.errors import ConfigError, FedhiveError
from fedhive.common.logs import setup_logging


def _ids(items: list[str]) -> tuple[str, ...] | None:
    ids = tuple(v.strip() for item in items for v in item.split(",") if v.strip())
    return ids or None


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with server settings")
    p.add_argument("--address", help="listen address host:port (default 127.0.0.1:8765)")
    p.add_argument("--run-dir", type=Path)
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with its stored settings (a run directory that exists "
        "is resumed anyway when the settings match)",
    )
    p.add_argument("--task", help="task factory, package.module:factory")
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-nodes", type=int)
    p.add_argument("--fraction", type=float)
    p.add_argument("--min-updates", type=int)
    p.add_argument("--round-timeout", dest="round_timeout_s", type=float)
    p.add_argument("--chunk-size", type=int)
    p.add_argument(
        "--max-node-examples",
        type=int,
        help="most examples a node may declare (its update's weight is its claim; default 1e6)",
    )
    p.add_argument("--eval-data", type=Path, help="held-out data for coordinator-side evaluation")
    p.add_argument("--seed", type=int)
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training config sent to nodes each round (epochs, batch_size, lr ...)",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="the coordinator's bundle (server.crt, server.key, ca.crt, crl.pem: `fedhive certs`)",
    )
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-ca", type=Path, help="the consortium CA certificate")
    p.add_argument("--crl", type=Path, help="revocation list (re-read when it changes)")
    p.add_argument(
        "--allow-node",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="only these node ids may join (repeat or comma-separate)",
    )
    p.add_argument(
        "--insecure", action="store_true", default=None, help="plain text, no TLS (tests only)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")


def config_from_args(ns: argparse.Namespace, **extra: Any) -> ServerConfig:
    overrides: dict[str, Any] = {
        "address": ns.address,
        "run_dir": ns.run_dir,
        "task": ns.task,
        "rounds": ns.rounds,
        "min_nodes": ns.min_nodes,
        "fraction": ns.fraction,
        "min_updates": ns.min_updates,
        "round_timeout_s": ns.round_timeout_s,
        "chunk_size": ns.chunk_size,
        "max_node_examples": ns.max_node_examples,
        "eval_data": ns.eval_data,
        "seed": ns.seed,
        "task_args": parse_assignments(ns.task_arg, "--task-arg"),
        "train": parse_assignments(ns.train, "--train"),
        "progress": False if ns.no_progress else None,
        "tls_dir": ns.tls_dir,
        "tls_cert": ns.tls_cert,
        "tls_key": ns.tls_key,
        "tls_ca": ns.tls_ca,
        "crl": ns.crl,
        "allowed_nodes": _ids(ns.allow_node),
        "insecure": ns.insecure,
        **extra,
    }
    base = None
    resume = getattr(ns, "resume", None)
    if resume is not None:
        stored = Path(resume) / "config.json"
        if not (Path(resume) / "run.sqlite").exists() or not stored.exists():
            raise ConfigError(f"--resume {resume}: not a fedhive run directory")
        base = json.loads(stored.read_text(encoding="utf-8"))
        overrides["run_dir"] = resume
    return build_config(ServerConfig, ns.config, overrides, base)


def run(config: ServerConfig) -> int:
    from rich.console import Console

    from fedhive.server.app import serve
    from fedhive.server.coordinator import RunAborted
    from fedhive.server.progress import RichProgress, summary_table

    console = Console(stderr=False)
    progress = RichProgress(config.rounds, console)
    try:
        if config.progress:
            with progress:
                history = serve(config, progress, freeze_startup=True)
        else:
            history = serve(config, progress, freeze_startup=True)
    except RunAborted as exc:
        console.print(f"[red]run aborted:[/red] {exc}")
        return 1
    console.print(summary_table(history))
    console.print(f"run directory: {config.run_dir}")
    return 0


def server_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedhive server", description=__doc__)
    add_server_args(p)
    ns = p.parse_args(argv)
    setup_logging(ns.log_level)
    try:
        config = config_from_args(ns)
        return run(config)
    except FedhiveError as exc:
        print(f"fedhive server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(server_main())
