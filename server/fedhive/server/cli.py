"""``fedhive server``: run a coordinator for one federated run."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from rich.markup import escape

from fedhive.common.cli.helptext import add_assignments, dflt, plain, toml_only
from fedhive.common.cli.logs import setup_logging
from fedhive.common.config import ServerConfig, build_config, parse_assignments
from fedhive.common.errors import ConfigError, FedhiveError
from fedhive.common.record import ROUND, RoundRecord
from fedhive.server.strategy.registry import describe_builtins

log = logging.getLogger("fedhive.server")


def _ids(items: list[str]) -> tuple[str, ...] | None:
    ids = tuple(v.strip() for item in items for v in item.split(",") if v.strip())
    return ids or None


# config fields that a flag sets (every other field: TOML only, listed in --help)
FLAGGED = (
    "address", "run_dir", "task", "task_args", "seed", "rounds", "min_nodes", "fraction",
    "min_updates", "round_timeout_s", "chunk_size", "train", "eval_data", "progress", "insecure",
    "tls_dir", "tls_cert", "tls_key", "tls_ca", "crl", "allowed_nodes", "max_node_examples",
    "strategy", "strategy_args", "status",
)  # fmt: skip
# flags `fedhive simulate` does not take: it makes its own run directory and certificates
SERVER_ONLY = ("resume", "tls_dir", "tls_cert", "tls_key", "tls_ca", "crl")


def add_server_args(p: argparse.ArgumentParser, *, simulate: bool = False) -> None:
    """The coordinator's flags (``simulate``: without those `fedhive simulate` sets itself)."""

    def d(field: str) -> str:
        return dflt(ServerConfig, field)

    p.epilog = toml_only(ServerConfig, FLAGGED)
    p.add_argument("--config", type=Path, help="TOML file with server settings (default none)")
    if simulate:
        p.add_argument(
            "--address", help="listen address host:port (default 127.0.0.1:0: a free port)"
        )
        p.add_argument("--run-dir", type=Path, help="run directory (default WORKDIR/run)")
    else:
        p.add_argument("--address", help=f"listen address host:port {d('address')}")
        p.add_argument(
            "--run-dir",
            type=Path,
            help=f"run directory: models, SQLite store, events.jsonl {d('run_dir')}",
        )
        p.add_argument(
            "--resume",
            type=Path,
            metavar="RUN_DIR",
            help="continue the run in RUN_DIR with its stored settings (default none: a run "
            "directory that exists is resumed anyway when the settings match)",
        )
    p.add_argument("--task", help=f"task factory, package.module:factory {d('task')}")
    p.add_argument("--rounds", type=int, help=f"training rounds {d('rounds')}")
    p.add_argument(
        "--min-nodes",
        type=int,
        help="nodes that must be connected before a round starts "
        + ("(default --nodes)" if simulate else d("min_nodes")),
    )
    p.add_argument(
        "--fraction",
        type=float,
        help=f"share of connected nodes selected each round, at least min-nodes {d('fraction')}",
    )
    p.add_argument(
        "--min-updates",
        type=int,
        help="updates needed to commit a round (default none: 1)",
    )
    p.add_argument(
        "--round-timeout",
        dest="round_timeout_s",
        type=float,
        metavar="SECONDS",
        help=f"a round closes with what arrived after this long {d('round_timeout_s')}",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        metavar="BYTES",
        help=f"bytes per streamed model chunk {d('chunk_size')}",
    )
    p.add_argument(
        "--eval-data",
        type=Path,
        help="held-out data for coordinator-side evaluation "
        + ("(default: the task's held-out share)" if simulate else d("eval_data")),
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the initial model and node selection "
        + ("(node i gets seed + i) " if simulate else "")
        + d("seed"),
    )
    add_assignments(
        p,
        "--task-arg",
        "argument of the task factory (repeat; default none)",
    )
    p.add_argument(
        "--max-node-examples",
        type=int,
        help="most examples a node may declare: its update's weight is its claim "
        + d("max_node_examples"),
    )
    p.add_argument(
        "--strategy",
        help="aggregation rule: a built-in (below) or package.module:factory " + d("strategy"),
    )
    add_assignments(
        p,
        "--strategy-arg",
        "argument of the strategy (repeat; default: the rule's own, listed below)",
    )
    p.epilog = (
        (p.epilog or "")
        + "\n\nstrategies (--strategy NAME, --strategy-arg KEY=VALUE):\n"
        + ("\n".join("  " + line for line in describe_builtins().splitlines()))
    )
    add_assignments(
        p,
        "--train",
        "training config sent to nodes each round: epochs, batch_size, lr ... (repeat; "
        "default: the task's)",
    )
    if not simulate:
        p.add_argument(
            "--tls-dir",
            type=Path,
            help="the coordinator's bundle: server.crt, server.key, ca.crt, crl.pem (from "
            "`fedhive certs server`: PKI/server) (default none)",
        )
        p.add_argument("--tls-cert", type=Path, help="certificate (default TLS_DIR/server.crt)")
        p.add_argument("--tls-key", type=Path, help="its key (default TLS_DIR/server.key)")
        p.add_argument(
            "--tls-ca", type=Path, help="the consortium CA certificate (default TLS_DIR/ca.crt)"
        )
        p.add_argument(
            "--crl",
            type=Path,
            help="revocation list, re-read when it changes (default TLS_DIR/crl.pem if present)",
        )
    p.add_argument(
        "--allow-node",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="only these node ids may join (repeat or comma-separate; default: every "
        "certificate of the CA)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plain text, no TLS (tests only)",
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    add_status_args(p)
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ... (default INFO)")


def add_status_args(p: argparse.ArgumentParser) -> None:
    """The status page and /metrics: off unless --status-port (or [status] in the TOML)."""
    p.add_argument(
        "--status-port",
        type=int,
        metavar="PORT",
        help="serve the status page and Prometheus /metrics on this port (0: a free one, "
        "logged; default off; [status] in the TOML also sets tls_cert, tls_key, page, "
        "max_rounds_shown)",
    )
    p.add_argument(
        "--status-host",
        metavar="HOST",
        help="address the status page listens on (default 127.0.0.1; any other needs "
        "--status-token-file)",
    )
    p.add_argument(
        "--status-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token the status page and /metrics require (default none)",
    )


def status_overrides(ns: argparse.Namespace, path: Path | None) -> dict[str, Any] | None:
    """``[status]`` from the TOML file with the status flags applied (None: no flag given)."""
    flags = {
        "port": getattr(ns, "status_port", None),
        "host": getattr(ns, "status_host", None),
        "token_file": getattr(ns, "status_token_file", None),
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    if not flags:
        return None
    table: dict[str, Any] = {}
    if path is not None:
        with contextlib.suppress(OSError, ValueError):  # build_config reports a bad file
            loaded = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("status")
            table = dict(loaded) if isinstance(loaded, dict) else {}
    if "port" not in flags and "port" not in table:
        raise ConfigError("--status-host and --status-token-file need --status-port (or [status])")
    return {**table, **flags}


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
        "strategy": ns.strategy,
        "strategy_args": parse_assignments(ns.strategy_arg, "--strategy-arg"),
        "progress": False if ns.no_progress else None,
        **{name: getattr(ns, name, None) for name in SERVER_ONLY if name != "resume"},
        "allowed_nodes": _ids(ns.allow_node),
        "insecure": ns.insecure,
        "status": status_overrides(ns, ns.config),
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
    """Today's one-shot coordinator: a service with this one run, ended when the run ends."""
    from fedhive.server.coordinator import BudgetSpent, RunAborted, RunStopped
    from fedhive.server.progress import RichProgress, make_console, summary_table
    from fedhive.server.service.service import one_shot

    console = make_console()
    progress = RichProgress(config.rounds, console)
    service = one_shot(config, progress if config.progress else None, freeze_startup=True)
    try:
        service.start()
        stop_on_signals(service.request_stop)
        entry = service.queue.next()
        assert entry is not None  # one_shot queued it
        with progress if config.progress else contextlib.nullcontext():
            history = service.run_entry(entry)
    except RunStopped:  # a deliberate stop (SIGTERM, Ctrl-C) is no failure: the run resumes
        console.print(f"coordinator stopped; start it again to resume the run in {config.run_dir}")
        return 0
    except BudgetSpent as exc:  # the run ended where its privacy budget says it must
        console.print(f"run stopped: {escape(str(exc))}")
        console.print(summary_table(committed_records(config.run_dir)))
        return 0
    except RunAborted as exc:
        console.print(f"[red]run aborted:[/red] {escape(str(exc))}")
        return 1
    finally:
        service.stop()
    console.print(summary_table(history))
    console.print(f"run directory: {config.run_dir}")
    return 0


def committed_records(run_dir: Path) -> list[RoundRecord]:
    """The run's committed training rounds, as its events.jsonl holds them."""
    records = []
    for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("event") == ROUND and event.get("committed"):
            records.append(RoundRecord.from_event(event))
    return records


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` (the running run stops resumably)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.warning("signal %d: stopping", signum)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def server_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fedhive server",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
