"""``fedhive service``: a coordinator that stays up and runs the runs submitted to it, in turn.

Its state directory holds the queue (service.sqlite: runs and the audit of control actions) and
each run's directory (runs/RUN_ID: as a one-shot run's). Killed at any instant, it resumes the
running run and keeps its queue when started again on the same state directory. Runs are
submitted with `fedhive run submit RUN.toml` (the control plane, administrator certificates) or,
locally, with --submit RUN.toml at start. Nodes that stay connected between runs are standing
nodes: `fedhive client --config NODE.toml` with a [tasks."package.module:factory"] table.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from fedhive.common.cli.helptext import plain
from fedhive.common.cli.logs import setup_logging
from fedhive.common.config import ServerConfig, build_config
from fedhive.common.errors import ConfigError, FedhiveError

LOCAL = "local (--submit)"


def read_settings(path: Path) -> dict[str, Any]:
    """A run's settings file (TOML), as a table; a ConfigError naming the file otherwise."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"run settings file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"run settings file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedhive service",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state-dir", type=Path, required=True, help="queue and run directories")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML with the service's settings: address, TLS, max_workers ... (default none)",
    )
    p.add_argument("--address", help="listen address host:port (default 127.0.0.1:8765)")
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="the coordinator's bundle from `fedhive certs server` (default none)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plain text, no TLS, no administrator certificates (local tests only)",
    )
    p.add_argument(
        "--submit",
        action="append",
        default=[],
        type=Path,
        metavar="RUN_TOML",
        help="queue this run at start (repeat; a run's settings as `fedhive server --config`; "
        "default none)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ... (default INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    from fedhive.server.cli import stop_on_signals
    from fedhive.server.service.service import Service

    ns = parser().parse_args(argv)
    setup_logging(ns.log_level)
    try:
        base = build_config(
            ServerConfig,
            ns.config,
            {"address": ns.address, "tls_dir": ns.tls_dir, "insecure": ns.insecure},
        )
        service = Service(base, ns.state_dir)
        for path in ns.submit:
            entry = service.submit(read_settings(path), LOCAL)
            service.queue.audit(LOCAL, "submit", entry.run_id, "ok", str(path))
            print(f"run {entry.run_id} queued ({entry.task})", flush=True)
    except FedhiveError as exc:
        print(f"fedhive service: {exc}", file=sys.stderr)
        return 2
    try:
        service.start()
        stop_on_signals(service.request_stop)
        service.serve()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
