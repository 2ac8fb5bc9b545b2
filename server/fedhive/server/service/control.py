"""The control plane (``fedhive.proto.v1.Control``, proto/fedhive/proto/v1/control.proto).

Thin: under mutual TLS the caller must present an administrator certificate
(:class:`~fedhive.server.identity.AdminGate`); every call, allowed or refused, is written to the
audit table with the caller's identity, the action, its target and the outcome. The work is the
service's (:class:`~fedhive.server.service.service.Service`): submit, cancel/stop, the queue, the
lobby's nodes; a run's events are read from its run directory, read-only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from fedhive.common.config import ServerConfig
from fedhive.common.errors import (
    AccessDeniedError,
    ConfigError,
    FedhiveError,
    InvalidUpdateError,
    LimitExceededError,
    RequestRefused,
    RunStateError,
)
from fedhive.proto.v1 import control_pb2 as cpb
from fedhive.server.identity import AdminGate
from fedhive.server.service.queue import (
    ENDED,
    MAX_RUN_NAME,
    QUEUED,
    RunEntry,
    check_run_name,
)
from fedhive.server.service.settings import MAX_SETTINGS_BYTES
from fedhive.server.store import read_committed, read_events

if TYPE_CHECKING:
    from fedhive.server.service.service import Service

log = logging.getLogger("fedhive.server.control")

CONTROL = "fedhive.proto.v1.Control"
MAX_LIST = 1000
MAX_WATCHERS = 16  # WatchRun streams open at once
WATCH_POLL_S = 0.5
MAX_ID = 64
MAX_STOP_REASON = 500  # characters of an administrator's reason to stop a run
DEFAULT_ROUNDS = ServerConfig.model_fields["rounds"].default


@dataclass
class Call:
    """One control call as the audit table records it (``outcome``: "ok" unless the method says
    otherwise, e.g. "existing" for a named run submitted again)."""

    caller: str
    outcome: str = "ok"
    detail: str = ""


def _run_id(text: str) -> str:
    if not text or len(text) > MAX_ID or not text.isalnum():
        raise InvalidUpdateError(f"not a run id: {text[:MAX_ID]!r}")
    return text


class ControlServicer:
    def __init__(self, service: Service, gate: AdminGate | None) -> None:
        self.service = service
        self.gate = gate
        self._watchers = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _call(self, context: grpc.ServicerContext, action: str, target: str = "") -> Iterator[Call]:
        """Who calls (refused unless an administrator); the outcome goes to the audit table."""
        queue = self.service.queue
        caller = f"insecure:{context.peer()}"
        call = Call(caller)
        try:
            if self.gate is not None:
                caller = call.caller = self.gate.identify(context)
            yield call
        except RequestRefused as exc:
            if isinstance(exc, AccessDeniedError):
                log.warning("control %s refused to %s: %s", action, context.peer(), exc)
                caller = f"refused:{context.peer()}"
            queue.audit(caller, action, target, f"refused: {exc}")
            context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
        except ConfigError as exc:
            queue.audit(caller, action, target, "refused: invalid settings", str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FedhiveError as exc:
            queue.audit(caller, action, target, f"failed: {exc}")
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                raise
            log.exception("control %s: internal error", action)
            queue.audit(caller, action, target, f"error: {type(exc).__name__}")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {action}")
        else:
            queue.audit(caller, action, target, call.outcome, call.detail)

    def _info(self, entry: RunEntry, position: int = 0) -> cpb.RunInfo:
        run_dir = self.service.run_dir(entry)
        return cpb.RunInfo(
            run_id=entry.run_id,
            state=entry.state,
            task=entry.task,
            submitted_by=entry.submitted_by,
            submitted_at=entry.submitted_at,
            started_at=entry.started_at or 0.0,
            ended_at=entry.ended_at or 0.0,
            reason=entry.reason,
            settings_json=json.dumps(entry.settings, sort_keys=True),
            rounds=int(entry.settings.get("rounds", DEFAULT_ROUNDS)),
            committed_rounds=read_committed(run_dir) if entry.state != QUEUED else 0,
            queue_position=position,
            name=entry.name,
        )

    def _positions(self) -> dict[str, int]:
        queued = [e.run_id for e in self.service.queue.runs(MAX_LIST) if e.state == QUEUED]
        return {run_id: i + 1 for i, run_id in enumerate(queued)}

    # ------------------------------------------------------------------ methods

    def submit_run(self, request: cpb.SubmitRunRequest, context: Any) -> cpb.RunInfo:
        with self._call(context, "submit", request.name[: MAX_RUN_NAME + 1]) as call:
            name = check_run_name(request.name) if request.name else ""
            if self.service.exit_when_idle:
                raise RunStateError(
                    "this coordinator runs one run (fedhive server) and exits: submit runs to a "
                    "coordinator service (fedhive service)"
                )
            text = request.settings_toml
            if len(text.encode()) > MAX_SETTINGS_BYTES:
                raise LimitExceededError(f"run settings exceed {MAX_SETTINGS_BYTES} bytes")
            try:
                settings = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"run settings are not valid TOML: {exc}") from exc
            if name:
                done = self.service.submit_once(settings, call.caller, name)
                entry, existed = done.entry, done.existed
            else:
                entry, existed = self.service.submit(settings, call.caller), False
            if existed:  # nothing queued: the audit says which run the name answered
                call.outcome, call.detail = "existing", f"{entry.run_id} ({entry.state})"
            else:
                self.service.queue.audit(call.caller, "queued", entry.run_id, "ok", entry.task)
            positions = self._positions()  # (the driver may have started it already)
            info = self._info(self.service.queue.get(entry.run_id), positions.get(entry.run_id, 0))
            info.existed = existed
            return info
        raise AssertionError("unreachable")

    def list_runs(self, request: cpb.ListRunsRequest, context: Any) -> cpb.RunList:
        with self._call(context, "list runs"):
            limit = min(request.limit or MAX_LIST, MAX_LIST)
            positions = self._positions()
            entries = self.service.queue.runs(limit)
            return cpb.RunList(runs=[self._info(e, positions.get(e.run_id, 0)) for e in entries])
        raise AssertionError("unreachable")

    def get_run(self, request: cpb.RunRef, context: Any) -> cpb.RunInfo:
        with self._call(context, "get run", request.run_id[:MAX_ID]):
            entry = self.service.queue.get(_run_id(request.run_id))
            return self._info(entry, self._positions().get(entry.run_id, 0))
        raise AssertionError("unreachable")

    def stop_run(self, request: cpb.StopRunRequest, context: Any) -> cpb.RunInfo:
        with self._call(context, "stop run", request.run_id[:MAX_ID]) as call:
            reason = request.reason.strip()[:MAX_STOP_REASON]
            entry = self.service.cancel(_run_id(request.run_id), call.caller, reason)
            return self._info(entry)
        raise AssertionError("unreachable")

    def list_nodes(self, request: cpb.ListNodesRequest, context: Any) -> cpb.NodeList:
        with self._call(context, "list nodes"):
            current = self.service.current()
            running = current.run_id if current is not None else ""
            return cpb.NodeList(
                nodes=[
                    cpb.NodeInfo(
                        node_id=n.node_id,
                        device=n.device,
                        tasks=list(n.tasks),
                        last_seen=n.last_seen,
                        current_run=running
                        if running and n.run_id == running and n.declined != running
                        else "",
                    )
                    for n in self.service.lobby.nodes()
                ]
            )
        raise AssertionError("unreachable")

    def watch_run(self, request: cpb.WatchRunRequest, context: Any) -> Iterator[cpb.RunEvent]:
        with self._call(context, "watch run", request.run_id[:MAX_ID]):
            entry = self.service.queue.get(_run_id(request.run_id))
            with self._lock:
                if self._watchers >= MAX_WATCHERS:
                    raise LimitExceededError(f"{self._watchers} watchers already (the most)")
                self._watchers += 1
        try:
            yield from self._watch(entry, request.after, context)
        finally:
            with self._lock:
                self._watchers -= 1

    def _watch(self, entry: RunEntry, after: int, context: Any) -> Iterator[cpb.RunEvent]:
        run_dir = self.service.run_dir(entry)
        queue = self.service.queue
        while context.is_active():
            state = queue.get(entry.run_id).state
            rows = read_events(run_dir, after)
            for seq, body in rows:
                yield cpb.RunEvent(seq=seq, json=body, state=state)
                after = seq
            if not rows and state in ENDED:
                return
            if not rows:
                time.sleep(WATCH_POLL_S)

    def handler(self) -> grpc.GenericRpcHandler:
        def uu(fn: Any, req: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            CONTROL,
            {
                "SubmitRun": uu(self.submit_run, cpb.SubmitRunRequest),
                "ListRuns": uu(self.list_runs, cpb.ListRunsRequest),
                "GetRun": uu(self.get_run, cpb.RunRef),
                "StopRun": uu(self.stop_run, cpb.StopRunRequest),
                "ListNodes": uu(self.list_nodes, cpb.ListNodesRequest),
                "WatchRun": grpc.unary_stream_rpc_method_handler(
                    self.watch_run,
                    request_deserializer=cpb.WatchRunRequest.FromString,
                    response_serializer=_serialize,
                ),
            },
        )


def _serialize(msg: Any) -> bytes:
    data: bytes = msg.SerializeToString()
    return data
