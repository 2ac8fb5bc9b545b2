"""One port, many runs: routes each node call to the run the service is running now.

The node-facing ``fedhive.proto.v1.Coordinator`` methods of a run are served by that run's own
:class:`~fedhive.server.servicer.CoordinatorServicer` (its coordinator, gate, admission). The
switchboard is registered once on the gRPC server and looks the current run up per call, so a
call started under one run finishes under it while the next run's calls go to the next one.
Between runs a node call is answered at once: ``Join`` naming a run that is not running gets
NOT_FOUND (a standing node goes back to waiting for a run); a session call (pull, heartbeat ...)
gets UNAUTHENTICATED (join again); a one-shot node's ``Join`` gets UNAVAILABLE (retry later).
The service's own methods (``AwaitRun``, ``DeclineRun``) are served whatever runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.servicer import SERVICE, CoordinatorServicer, generic_handler

PREFIX = f"/{SERVICE}/"
NO_RUN = "no run is running on this coordinator"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> Any:
    context.abort(code, message)


def _idle_join(request: bytes, context: grpc.ServicerContext) -> Any:
    try:
        run_id = pb.JoinRequest.FromString(request).run_id
    except Exception:  # a malformed request: refused like any other
        return _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed JoinRequest")
    if run_id:
        return _abort(context, grpc.StatusCode.NOT_FOUND, f"run {run_id[:64]!r} is not running")
    return _abort(context, grpc.StatusCode.UNAVAILABLE, f"{NO_RUN}; retry later")


def _idle_session(request: Any, context: grpc.ServicerContext) -> Any:
    return _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"{NO_RUN}: this session is over")


def _idle_pull(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
    _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"{NO_RUN}: this session is over")
    yield b""  # pragma: no cover - abort raises


def _idle_push(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    return _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"{NO_RUN}: this session is over")


_raw = {"request_deserializer": None, "response_serializer": None}
IDLE: dict[str, grpc.RpcMethodHandler] = {
    "Join": grpc.unary_unary_rpc_method_handler(_idle_join, **_raw),
    "PullTask": grpc.unary_stream_rpc_method_handler(_idle_pull, **_raw),
    "PushUpdate": grpc.stream_unary_rpc_method_handler(_idle_push, **_raw),
    **{
        name: grpc.unary_unary_rpc_method_handler(_idle_session, **_raw)
        for name in ("ReportEvaluation", "Heartbeat", "Leave", "DeclineTask", "SecAggStep")
    },
}
del _raw


class Switchboard(grpc.GenericRpcHandler):
    def __init__(self, own: Mapping[str, grpc.RpcMethodHandler] | None = None) -> None:
        self._own = dict(own or {})
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
            return IDLE.get(name)
        return current.service(handler_call_details)
