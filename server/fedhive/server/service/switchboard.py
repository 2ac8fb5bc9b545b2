"""One port, many runs: routes each node call to the run the service is running now.

The node-facing ``fedhive.proto.v1.Coordinator`` methods of a run are served by that run's own
:class:`~fedhive.server.servicer.CoordinatorServicer` (its coordinator, gate, admission). The
switchboard is registered once on the gRPC server and looks the current run up per call, so a
call started under one run finishes under it while the next run's calls go to the next one.
Between runs a node call is answered at once: ``Join`` naming a run that is over (neither queued
nor running) gets NOT_FOUND (a standing node goes back to waiting for a run); a session call
(pull, heartbeat ...) gets UNAUTHENTICATED (join again); a one-shot node's ``Join`` gets
UNAVAILABLE (retry later). While the service is (re)starting a run, every node call gets
UNAVAILABLE: its nodes retry until the run is served again, instead of leaving it; so does a
call routed here just before a run started to be served (it retries into that run).
Under mutual TLS every call between runs first passes the service's peer gate (CA, CRL, node
certificate, allow-list), as a run's calls pass the run's: a revoked node is refused
(PERMISSION_DENIED) before it learns anything, even that no run is running.
The service's own methods (``AwaitRun``, ``DeclineRun``) are served whatever runs (the lobby
passes them through the same gate).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.identity import PeerGate
from fedhive.server.servicer import SERVICE, CoordinatorServicer, _status, generic_handler

PREFIX = f"/{SERVICE}/"
NO_RUN = "no run is running on this coordinator"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> Any:
    context.abort(code, message)


_raw = {"request_deserializer": None, "response_serializer": None}
SESSION_CALLS = ("ReportEvaluation", "Heartbeat", "Leave", "DeclineTask", "SecAggStep")
STARTING = "the coordinator is starting a run; retry shortly"


class Switchboard(grpc.GenericRpcHandler):
    """``own``: the service's methods; ``live(run_id)``: whether a run is queued or running (a
    join naming it waits for it); ``starting()``: whether a run is about to be served (a restarted
    service resuming it: its nodes retry instead of leaving it)."""

    def __init__(
        self,
        own: Mapping[str, grpc.RpcMethodHandler] | None = None,
        live: Callable[[str], bool] = lambda run_id: False,
        starting: Callable[[], bool] = lambda: False,
        gate: PeerGate | None = None,
    ) -> None:
        self._own = dict(own or {})
        self._gate = gate
        self._live = live
        self._starting = starting
        self._idle: dict[str, grpc.RpcMethodHandler] = {
            "Join": grpc.unary_unary_rpc_method_handler(self._idle_join, **_raw),
            "PullTask": grpc.unary_stream_rpc_method_handler(self._idle_pull, **_raw),
            "PushUpdate": grpc.stream_unary_rpc_method_handler(self._idle_push, **_raw),
            **{
                name: grpc.unary_unary_rpc_method_handler(self._idle_session, **_raw)
                for name in SESSION_CALLS
            },
        }
        self._lock = threading.Lock()
        self._current: grpc.GenericRpcHandler | None = None
        self.servicer: CoordinatorServicer | None = None

    def switch(self, servicer: CoordinatorServicer | None) -> None:
        """Route node calls to ``servicer``'s run from now on (None: no run)."""
        handler = generic_handler(servicer) if servicer is not None else None
        with self._lock:
            self.servicer, self._current = servicer, handler

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if not method.startswith(PREFIX):
            return None
        name = method[len(PREFIX) :]
        own = self._own.get(name)
        if own is not None:
            return own
        with self._lock:
            current = self._current
        if current is None:
            return self._idle.get(name)
        return current.service(handler_call_details)

    # ------------------------------------------------------------------ between runs

    def _retry(self) -> bool:
        """Whether a call answered between runs is told to retry shortly: a run is about to be
        served, or is served now (the call was routed here just before it was; told its session
        is over, a resumed run's node would join again and leave its old session behind, waited
        out by the round as a silent node)."""
        with self._lock:
            if self._current is not None:
                return True
        return self._starting()

    def _admit(self, context: grpc.ServicerContext, method: str) -> None:
        """The peer gate, as during a run: refused (aborted) unless a live node of the CA."""
        if self._gate is not None:
            with _status(context, method):
                self._gate.identify(context, method)

    def _idle_join(self, request: bytes, context: grpc.ServicerContext) -> Any:
        self._admit(context, "Join")
        try:
            run_id = pb.JoinRequest.FromString(request).run_id[:64]
        except Exception:  # a malformed request: refused like any other
            return _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed JoinRequest")
        if self._retry():  # (a resumed one-shot run keeps its directory's id, not the queue's)
            return _abort(context, grpc.StatusCode.UNAVAILABLE, STARTING)
        if run_id and not self._live(run_id):
            return _abort(context, grpc.StatusCode.NOT_FOUND, f"run {run_id!r} is not running")
        return _abort(context, grpc.StatusCode.UNAVAILABLE, f"{NO_RUN}; retry later")

    def _session_over(self, context: grpc.ServicerContext, method: str) -> Any:
        self._admit(context, method)
        if self._retry():
            return _abort(context, grpc.StatusCode.UNAVAILABLE, STARTING)
        return _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"{NO_RUN}: this session is over")

    def _idle_session(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._session_over(context, "session call")

    def _idle_pull(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._session_over(context, "PullTask")
        yield b""  # pragma: no cover - abort raises

    def _idle_push(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return self._session_over(context, "PushUpdate")
