"""The ``fedhive`` command line: this dispatcher, and the subcommands ``fedhive.common`` owns
(``certs``, ``partition``, ``report``), with the help text and logging set-up they share.

The dispatcher sends each subcommand to the package that owns it.
``fedhive.common`` imports neither ``fedhive.server`` nor ``fedhive.client``: each subcommand is
an import path resolved only when it is used.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "server": ("fedhive.server.cli:server_main", "run a coordinator for one run"),
    "service": ("fedhive.server.service.cli:main", "run a coordinator service: a queue of runs"),
    "run": (
        "fedhive.server.service.admin:run_main",
        "submit, list, watch and stop a service's runs",
    ),
    "nodes": ("fedhive.server.service.admin:nodes_main", "list a service's standing nodes"),
    "client": ("fedhive.client.cli:main", "run a node that joins a coordinator"),
    "simulate": ("fedhive.server.simulate:main", "coordinator + N node processes on loopback"),
    "certs": (
        "fedhive.common.cli.certs:main",
        "consortium PKI: CA, coordinator and node certificates",
    ),
    "prepare": ("fedhive.server.simulate:prepare_main", "a task's simulation data, named nodes"),
    "health": ("fedhive.client.health:main", "probe a coordinator's gRPC health service"),
    "partition": ("fedhive.common.cli.partition:main", "split a data set into N node folders"),
    "report": ("fedhive.common.cli.report:main", "plot and summarise a run directory"),
}


def usage() -> str:
    lines = ["usage: fedhive <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`fedhive <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"fedhive: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from fedhive.common.runtime.memory import tune_malloc

    tune_malloc()
    module_name, _, attr = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), attr)
    return int(entry(rest) or 0)
