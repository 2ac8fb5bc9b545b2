"""``fedhive client``: run a node that dials out to a coordinator.

With a [tasks."package.module:factory"] table per approved task in its --config TOML (data_dir,
task_args, seed), the node stands: it stays connected to a coordinator service and takes part in
run after run, each with the approved task the run names and that task's data; it declines any
other task without importing it, and SIGTERM makes it leave.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from fedhive.common.cli.helptext import add_assignments, dflt, plain, toml_only
from fedhive.common.cli.logs import setup_logging
from fedhive.common.config import ClientConfig, build_config, parse_assignments
from fedhive.common.errors import FedhiveError, HandshakeRefused
from fedhive.common.runtime.memory import startup_gc

if TYPE_CHECKING:
    from fedhive.client.node import Node
    from fedhive.client.standing import StandingNode
    from fedhive.client.transport import GrpcTransport

    Runner = Node | StandingNode

log = logging.getLogger("fedhive.client")

# exit codes: 0 the run finished (or SIGTERM: the node left), 1 refused or failed during the run,
# 2 a setting, bundle or the data is wrong (found at start), 3 the TLS handshake with the
# coordinator fails for a reason retrying cannot fix (another CA, another host name)
EXIT_HANDSHAKE_REFUSED = 3


# config fields that a flag sets (every other field: TOML only, listed in --help)
FLAGGED = (
    "server", "task", "data_dir", "name", "device", "threads", "seed", "task_args",
    "max_connect_attempts", "identity_key", "backoff_max_s", "tls_dir", "tls_cert", "tls_key",
    "tls_ca", "tls_server_name", "insecure", "flower_app", "max_epsilon", "dp_delta", "state_dir",
    "dp_min_noise_multiplier",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    def d(field: str) -> str:
        return dflt(ClientConfig, field)

    p = argparse.ArgumentParser(
        prog="fedhive client",
        description=plain(__doc__),
        epilog=toml_only(ClientConfig, FLAGGED),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with client settings (default none)")
    p.add_argument("--server", help=f"coordinator address host:port {d('server')}")
    p.add_argument(
        "--task",
        help=f"task factory, package.module:factory: the coordinator's {d('task')}",
    )
    p.add_argument(
        "--flower-app",
        metavar="MODULE:APP",
        help="run an unchanged Flower ClientApp (or legacy client_fn) as this node's task; "
        "give its initial model with --task-arg init=MODULE:NAME and its node_config with "
        "--task-arg KEY=VALUE, e.g. partition-id=0 (default none; README: Coming from Flower)",
    )
    p.add_argument(
        "--data",
        dest="data_dir",
        type=Path,
        help="this node's private data folder (default none)",
    )
    p.add_argument(
        "--name",
        help="node name (default: the host name); under mutual TLS the certificate's name",
    )
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:1 ... {d('device')}")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: OMP_NUM_THREADS if set, else the CPUs this "
        "process may use divided by the fedhive nodes on this machine; logged)",
    )
    p.add_argument("--seed", type=int, help=f"seed of this node's training {d('seed')}")
    add_assignments(
        p,
        "--task-arg",
        "argument of the task factory (repeat; default none)",
    )
    p.add_argument(
        "--max-connect-attempts",
        type=int,
        help="give up after this many failed attempts to reach the coordinator (default none: "
        "never)",
    )
    p.add_argument(
        "--identity-key",
        type=Path,
        help="Ed25519 key file for secure aggregation (default TLS_DIR/identity.key if "
        "present, else a fresh key per process)",
    )
    p.add_argument(
        "--backoff-max",
        type=float,
        metavar="SECONDS",
        help=f"longest wait between reconnects {d('backoff_max_s')}",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="this node's bundle: ca.crt, node.crt, node.key (from `fedhive certs node`: "
        "PKI/nodes/ID) (default none)",
    )
    p.add_argument("--tls-cert", type=Path, help="certificate (default TLS_DIR/node.crt)")
    p.add_argument("--tls-key", type=Path, help="its key (default TLS_DIR/node.key)")
    p.add_argument(
        "--tls-ca", type=Path, help="the consortium CA certificate (default TLS_DIR/ca.crt)"
    )
    p.add_argument(
        "--tls-server-name",
        help="name in the coordinator's certificate to expect (default: the host of --server)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plain text, no TLS (tests only)",
    )
    p.add_argument(
        "--max-epsilon",
        type=float,
        help="this site's DP-SGD budget: decline a round that would spend more (default none)",
    )
    p.add_argument(
        "--dp-delta",
        type=float,
        help="the delta this site's budget is checked at (default: the run's [dp] delta)",
    )
    p.add_argument(
        "--dp-min-noise-multiplier",
        type=float,
        help="distributed DP: decline a round whose noise on a sum of the secure round's "
        "threshold of survivors is below this multiplier (default none)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where the node keeps its DP-SGD ledger, dp-ledger.json (default: --data)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ... (default INFO)")
    return p


def build_node(config: ClientConfig, name_flag: str | None) -> tuple[Runner, GrpcTransport]:
    """The node and its transport (threads chosen, task loaded, model built); under mutual TLS
    the node's id is its certificate's name. With approved ``tasks``: a standing node (its
    task is loaded per run)."""
    from fedhive.client.node import Node
    from fedhive.client.standing import StandingNode
    from fedhive.client.threads import ThreadChoice
    from fedhive.client.transport import ClientTls, GrpcTransport

    threads = ThreadChoice(config.threads)
    threads.apply()

    tls = ClientTls.from_config(config)
    if tls is not None:
        node_id = tls.identity.common_name
        if config.name != node_id and name_flag is not None:
            log.warning("--name %s ignored: this node's identity is its certificate's", name_flag)
        config = config.model_copy(update={"name": node_id})
        log.info(
            "identity %s (certificate from %s, valid until %s)",
            node_id,
            tls.identity.issuer,
            f"{tls.identity.not_after:%Y-%m-%d}",
        )
    transport = GrpcTransport(config.server, tls=tls)
    if config.tasks:

        def make_node(run_config: ClientConfig, run_id: str) -> Node:
            return Node(run_config, transport, before_task=threads.apply, run_id=run_id)

        return StandingNode(config, transport, make_node), transport
    return Node(config, transport, before_task=threads.apply), transport


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    setup_logging(ns.log_level)
    try:
        config = build_config(
            ClientConfig,
            ns.config,
            {
                "server": ns.server,
                "task": ns.task,
                "data_dir": ns.data_dir,
                "name": ns.name,
                "device": ns.device,
                "threads": ns.threads,
                "seed": ns.seed,
                "task_args": parse_assignments(ns.task_arg, "--task-arg"),
                "max_connect_attempts": ns.max_connect_attempts,
                "identity_key": ns.identity_key,
                "backoff_max_s": ns.backoff_max,
                "tls_dir": ns.tls_dir,
                "tls_cert": ns.tls_cert,
                "tls_key": ns.tls_key,
                "tls_ca": ns.tls_ca,
                "tls_server_name": ns.tls_server_name,
                "insecure": ns.insecure,
                "flower_app": ns.flower_app,
                "max_epsilon": ns.max_epsilon,
                "dp_delta": ns.dp_delta,
                "state_dir": ns.state_dir,
                "dp_min_noise_multiplier": ns.dp_min_noise_multiplier,
            },
        )
        with startup_gc():
            node, transport = build_node(config, ns.name)
    except FedhiveError as exc:
        print(f"fedhive client: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: leaving the federation", signum)
        node.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stats = node.run()
    except HandshakeRefused as exc:
        print(f"fedhive client: {exc}", file=sys.stderr)
        return EXIT_HANDSHAKE_REFUSED
    except FedhiveError as exc:
        print(f"fedhive client: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    log.info(
        "done: %d round(s) trained, %.1f MB down, %.1f MB up",
        stats.rounds_trained,
        stats.bytes_down / 1e6,
        stats.bytes_up / 1e6,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
