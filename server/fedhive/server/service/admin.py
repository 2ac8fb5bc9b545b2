"""``fedhive run`` and ``fedhive nodes``: an administrator drives a coordinator service.

::

    fedhive run submit RUN.toml     queue a run (its settings: a `fedhive server --config` TOML)
        [--name NAME]               ... once: a run of that name is not submitted again
    fedhive run list                the service's runs, queued, running and ended
    fedhive run status RUN_ID       the run, then its rounds live as the server shows them
    fedhive run stop RUN_ID         cancel it while queued, stop it while running
    fedhive nodes                   the standing nodes: identity, device, approved tasks, last seen

Over mutual TLS with an administrator's bundle from `fedhive certs admin` (--tls-dir: admin.crt,
admin.key, ca.crt); --insecure for a service started with --insecure (local use only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from rich.markup import escape
from rich.table import Table

from fedhive.common.cli.helptext import plain
from fedhive.common.crypto.pki import check_bundle, read_bytes
from fedhive.common.errors import ConfigError, FedhiveError, PkiError
from fedhive.common.record import RoundRecord
from fedhive.proto.v1 import control_pb2 as cpb
from fedhive.server.progress import RichProgress, make_console, summary_table
from fedhive.server.service.control import CONTROL
from fedhive.server.service.queue import RUN_NAME_RULE, check_run_name
from fedhive.server.service.settings import MAX_SETTINGS_BYTES

TIMEOUT_S = 30.0
ROUND_EVENTS = ("round", "evaluate")


class ControlError(FedhiveError):
    """The control plane refused the call or could not be reached (``code``: its status)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    def __init__(
        self, address: str, tls_dir: Path | None, insecure: bool, server_name: str | None = None
    ) -> None:
        if insecure == (tls_dir is not None):
            raise ConfigError(
                "give --tls-dir (an administrator's bundle from `fedhive certs admin`: admin.crt, "
                "admin.key, ca.crt) or --insecure (a service started with --insecure)"
            )
        if tls_dir is None:
            print(
                "fedhive: INSECURE: plain-text control plane, no administrator certificate",
                file=sys.stderr,
            )
            self._channel = grpc.insecure_channel(address)
        else:
            cert, key, ca = tls_dir / "admin.crt", tls_dir / "admin.key", tls_dir / "ca.crt"
            try:
                check_bundle(cert, key, ca)
                creds = grpc.ssl_channel_credentials(
                    read_bytes(ca, "CA"), read_bytes(key, "key"), read_bytes(cert, "certificate")
                )
            except PkiError as exc:
                raise ConfigError(f"the administrator bundle in {tls_dir}: {exc}") from exc
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self._channel = grpc.secure_channel(address, creds, options=options)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, reply: Any) -> Any:
        fn = self._channel.unary_unary(
            f"/{CONTROL}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )
        try:
            return fn(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            raise _error(exc, method) from exc

    def watch(self, run_id: str, after: int = 0) -> Any:
        fn = self._channel.unary_stream(
            f"/{CONTROL}/WatchRun",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=cpb.RunEvent.FromString,
        )
        try:
            yield from fn(cpb.WatchRunRequest(run_id=run_id, after=after))
        except grpc.RpcError as exc:
            raise _error(exc, "WatchRun") from exc


def _error(exc: grpc.RpcError, method: str) -> ControlError:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ControlError(f"{method}: {name}: {details}", name)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _run_line(info: Any) -> str:
    where = f" (queue position {info.queue_position})" if info.queue_position else ""
    said = f"{info.state}: {info.reason}" if info.reason else info.state
    if info.reason.startswith(info.state):  # "stopped by administrator alice: enough"
        said = info.reason
    elif info.state == "running" and info.reason:  # an administrator's stop, under way
        said = f"running, stopping ({info.reason})"
    named = f" {json.dumps(info.name)}" if info.name else ""
    return (
        f"run {info.run_id}{named} {said}{where}  task {info.task}, "
        f"{info.committed_rounds}/{info.rounds} rounds, submitted by {info.submitted_by}"
    )


def _status(client: ControlClient, run_id: str, follow: bool) -> int:
    console = make_console()
    info = client.call("GetRun", cpb.RunRef(run_id=run_id), cpb.RunInfo)
    console.print(escape(_run_line(info)))
    if not follow:
        return 0
    progress = RichProgress(int(info.rounds), console)
    history: list[RoundRecord] = []
    state = info.state
    for message in client.watch(run_id):
        event = json.loads(message.json)
        state = message.state
        if event.get("event") in ROUND_EVENTS:
            record = RoundRecord.from_event(event)
            progress.round_closed(record)
            history.append(record)
        else:
            extra = {k: v for k, v in event.items() if k not in ("event", "time")}
            console.print(escape(f"{event.get('event')}: {json.dumps(extra, sort_keys=True)}"))
    if history:
        console.print(summary_table(history))
    final = client.call("GetRun", cpb.RunRef(run_id=run_id), cpb.RunInfo)
    console.print(escape(_run_line(final)))
    return 0 if final.state == "finished" or state == "finished" else 1


def _nodes_table(nodes: Any) -> Table:
    table = Table(title="standing nodes")
    for col in ("node", "device", "approved tasks", "last seen", "current run"):
        table.add_column(col)
    for n in nodes.nodes:
        table.add_row(
            n.node_id, n.device, "\n".join(n.tasks), _when(n.last_seen), n.current_run or "-"
        )
    return table


def _runs_table(runs: Any) -> Table:
    table = Table(title="runs")
    for col in ("run", "name", "state", "task", "rounds", "submitted by", "submitted", "reason"):
        table.add_column(col)
    for r in runs.runs:
        state = f"{r.state} #{r.queue_position}" if r.queue_position else r.state
        table.add_row(
            r.run_id,
            r.name or "-",
            state,
            r.task,
            f"{r.committed_rounds}/{r.rounds}",
            r.submitted_by,
            _when(r.submitted_at),
            r.reason,
        )
    return table


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", default="127.0.0.1:8765", help="service address (default %(default)s)"
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="administrator bundle: admin.crt, admin.key, ca.crt (default none: --insecure)",
    )
    p.add_argument(
        "--tls-server-name",
        help="name in the service's certificate to expect (default: the host of --server)",
    )
    p.add_argument("--insecure", action="store_true", help="plain text (local use only)")


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedhive run",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("submit", help="queue a run")
    c.add_argument("settings", type=Path, help="the run's settings (TOML)")
    c.add_argument(
        "--name",
        default="",
        help=f"the run's name, its identity in the queue for good ({RUN_NAME_RULE}): a run of "
        "that name is not submitted again (exit 0), or refused if its settings differ "
        "(default none: a new run every time)",
    )
    _connection_args(c)
    c = sub.add_parser("list", help="list the runs")
    _connection_args(c)
    c = sub.add_parser("status", help="a run, then its rounds live until it ends")
    c.add_argument("run_id", help="the run's id (fedhive run list)")
    c.add_argument("--no-follow", action="store_true", help="print the run's state and exit")
    _connection_args(c)
    c = sub.add_parser("stop", help="cancel a queued run or stop the running one")
    c.add_argument("run_id", help="the run's id (fedhive run list)")
    c.add_argument(
        "--reason", default="", help="recorded with the run and in the audit table (default none)"
    )
    _connection_args(c)
    return p


def _client(ns: argparse.Namespace) -> ControlClient:
    return ControlClient(ns.server, ns.tls_dir, ns.insecure, ns.tls_server_name)


def run_main(argv: list[str] | None = None) -> int:
    ns = run_parser().parse_args(argv)
    try:
        client = _client(ns)
        try:
            if ns.action == "submit":
                name = check_run_name(ns.name) if ns.name else ""
                text = ns.settings.read_text(encoding="utf-8") if ns.settings.exists() else None
                if text is None:
                    raise ConfigError(f"run settings file not found: {ns.settings}")
                if len(text.encode()) > MAX_SETTINGS_BYTES:
                    raise ConfigError(f"{ns.settings} exceeds {MAX_SETTINGS_BYTES} bytes")
                request = cpb.SubmitRunRequest(settings_toml=text, name=name)
                info = client.call("SubmitRun", request, cpb.RunInfo)
                if info.existed:
                    print(
                        f"run {info.name} already submitted as {info.run_id} ({info.state}): "
                        "not submitted again"
                    )
                else:
                    print(_run_line(info))
            elif ns.action == "list":
                runs = client.call("ListRuns", cpb.ListRunsRequest(), cpb.RunList)
                make_console().print(_runs_table(runs))
            elif ns.action == "status":
                return _status(client, ns.run_id, not ns.no_follow)
            else:
                stop = cpb.StopRunRequest(run_id=ns.run_id, reason=ns.reason)
                print(_run_line(client.call("StopRun", stop, cpb.RunInfo)))
        finally:
            client.close()
    except ControlError as exc:
        print(f"fedhive run: {exc}", file=sys.stderr)
        return 1
    except FedhiveError as exc:
        print(f"fedhive run: {exc}", file=sys.stderr)
        return 2
    return 0


def nodes_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedhive nodes", description="the service's standing nodes")
    _connection_args(p)
    ns = p.parse_args(argv)
    try:
        client = _client(ns)
        try:
            nodes = client.call("ListNodes", cpb.ListNodesRequest(), cpb.NodeList)
        finally:
            client.close()
    except ControlError as exc:
        print(f"fedhive nodes: {exc}", file=sys.stderr)
        return 1
    except FedhiveError as exc:
        print(f"fedhive nodes: {exc}", file=sys.stderr)
        return 2
    make_console().print(_nodes_table(nodes))
    return 0
