"""The gRPC face of the coordinator: bytes -> domain types (serde) -> coordinator -> bytes.

Thin by design. Our refusals become their gRPC status codes with the message that names the
problem; anything unexpected is logged and answered with INTERNAL, and never reaches the round.
Each round's broadcast is already encoded, so PullTask streams pre-serialized messages.
Under mutual TLS every call first passes the :class:`~fedhive.server.identity.PeerGate`: the
caller's node id is the CN of its verified certificate, and the coordinator checks it against the
node record the token belongs to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedhive.common.errors import (
    AccessDeniedError,
    FedhiveError,
    InvalidUpdateError,
    RequestRefused,
    UnknownRunError,
)
from fedhive.common.wire import serde, serde_secagg
from fedhive.common.wire.chunks import Chunk
from fedhive.common.wire.messages import NodeAuth, UpdateHeader, UpdateMessage, UpdateTrailer
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.coordinator import Coordinator
from fedhive.server.identity import PeerGate
from fedhive.server.limits import Admission, Watchdog, wire_wait
from fedhive.server.rounds import UpdateSession
from fedhive.server.secure import MAX_STEP_WAIT_S

log = logging.getLogger("fedhive.server.grpc")

SERVICE = "fedhive.proto.v1.Coordinator"


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not decode; handled as a refusal by the method."""

    reason: str


def _safe(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(buf: bytes) -> Any:
        try:
            return decode(buf)
        except FedhiveError as exc:
            return Malformed(str(exc))
        except Exception as exc:  # defensive: a decoder bug must not kill the call silently
            return Malformed(f"undecodable message: {exc}")

    return deserialize


def _proto(msg_type: type[Any], convert: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    return _safe(lambda buf: convert(serde._parse(msg_type, buf)))


def _serialize(msg: Any) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


@contextlib.contextmanager
def _status(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    try:
        yield
    except RequestRefused as exc:
        context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
    except FedhiveError as exc:
        log.error("%s failed: %s", method, exc)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except Exception as exc:
        if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
            raise
        log.exception("%s: internal error", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidUpdateError(request.reason)
    return request


class CoordinatorServicer:
    """``watchdog``: cuts off stalled uploads (its owner starts and stops it); without one,
    an upload waits for its caller until the round's deadline."""

    def __init__(
        self,
        coordinator: Coordinator,
        gate: PeerGate | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.coord = coordinator
        self.gate = gate
        self.watchdog = watchdog
        self.admission = Admission(coordinator.config.stream_budget())

    def _peer(self, context: grpc.ServicerContext, method: str) -> str | None:
        """The caller's verified node id (None in insecure mode); a refused peer is evicted."""
        if self.gate is None:
            return None
        try:
            return self.gate.identify(context, method)
        except AccessDeniedError as exc:
            name = (context.auth_context().get("x509_common_name") or [b""])[0]
            if isinstance(name, bytes):
                self.coord.evict_peer(name.decode("utf-8", "replace"), exc)
            raise

    def join(self, request: Any, context: grpc.ServicerContext) -> pb.JoinReply:
        with _status(context, "Join"):
            peer = self._peer(context, "Join")
            if peer is not None:
                log.info("join from %s, certificate of %s", context.peer(), peer)
            request = _checked(request)
            if request.run_id and request.run_id != self.coord.run_id:
                raise UnknownRunError(f"run {request.run_id!r} is not running")
            reply = self.coord.join(request, peer_id=peer)
            return serde.join_reply_to_proto(reply)
        raise AssertionError("unreachable")

    def pull_task(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        with contextlib.ExitStack() as slot:  # held until the model is streamed out
            with _status(context, "PullTask"):
                peer = self._peer(context, "PullTask")
                auth, wait_s = _checked(request)
                # without TLS the claimed node id (a wrong token is refused at once)
                slot.enter_context(self.admission.stream("PullTask", peer or auth.node_id))
                messages = self.coord.pull(auth, wait_s, peer_id=peer, active=context.is_active)
            yield from messages

    def push_update(self, requests: Iterator[Any], context: grpc.ServicerContext) -> pb.PushReply:
        session: UpdateSession | None = None
        stalled: list[str] = []
        with _status(context, "PushUpdate"):
            peer = self._peer(context, "PushUpdate")
            with self.admission.stream("PushUpdate", peer):
                if self.watchdog is not None:
                    cfg = self.coord.config
                    requests = self.watchdog.watch(
                        requests,
                        cfg.header_timeout_s,
                        cfg.upload_idle_timeout_s,
                        context.cancel,
                        stalled,
                    )
                try:
                    first = _checked(next(requests, None) or Malformed("empty update stream"))
                    if not isinstance(first, UpdateHeader):
                        raise InvalidUpdateError("an update stream must start with its header")
                    session = self.coord.open_update(first, peer_id=peer, cancel=context.cancel)
                    trailer = self._receive(session, requests)
                    contribution = session.finish(trailer)
                    return pb.PushReply(
                        round=session.state.number, bytes_received=contribution.bytes_in
                    )
                except RequestRefused as exc:
                    if session is not None:  # a cut-off stream may look merely truncated
                        session.abort(f"upload broke off ({stalled[0]})" if stalled else str(exc))
                    raise
                except Exception as exc:
                    if session is not None:
                        why = stalled[0] if stalled else f"{type(exc).__name__}: {exc}"
                        session.abort(f"upload broke off ({why})")
                    elif stalled:
                        log.warning("PushUpdate from %s cut off: %s", context.peer(), stalled[0])
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _receive(
        session: UpdateSession, requests: Iterator[UpdateMessage | Malformed]
    ) -> UpdateTrailer:
        for msg in requests:
            msg = _checked(msg)
            if isinstance(msg, Chunk):
                session.add_chunk(msg)
            elif isinstance(msg, UpdateTrailer):
                if next(requests, None) is not None:
                    raise InvalidUpdateError("update stream continues after its trailer")
                return msg
            else:
                raise InvalidUpdateError("an update stream carries exactly one header")
        raise InvalidUpdateError(
            f"truncated stream: it ended after {session.checker.received} of "
            f"{session.checker.total} bytes, without a trailer"
        )

    def report_evaluation(self, request: Any, context: grpc.ServicerContext) -> pb.Ack:
        with _status(context, "ReportEvaluation"):
            peer = self._peer(context, "ReportEvaluation")
            self.coord.report_evaluation(_checked(request), peer_id=peer)
            return pb.Ack()
        raise AssertionError("unreachable")

    def heartbeat(self, request: Any, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        with _status(context, "Heartbeat"):
            peer = self._peer(context, "Heartbeat")
            rnd, interval = self.coord.heartbeat(_checked(request), peer_id=peer)
            return pb.HeartbeatReply(round=rnd, heartbeat_interval_s=interval)
        raise AssertionError("unreachable")

    def secagg_step(self, request: Any, context: grpc.ServicerContext) -> pb.SecAggReply:
        with _status(context, "SecAggStep"):
            peer = self._peer(context, "SecAggStep")
            request = _checked(request)
            wire_wait(request.wait_s, "SecAggStep wait_s", MAX_STEP_WAIT_S)
            with self.admission.stream("SecAggStep", peer or request.auth.node_id):
                reply = self.coord.secagg_step(request, peer_id=peer)
            return serde_secagg.reply_to_proto(reply)
        raise AssertionError("unreachable")

    def decline_task(self, request: Any, context: grpc.ServicerContext) -> pb.Ack:
        with _status(context, "DeclineTask"):
            peer = self._peer(context, "DeclineTask")
            auth, round_, reason = _checked(request)
            self.coord.decline(auth, round_, reason, peer_id=peer)
            return pb.Ack()
        raise AssertionError("unreachable")

    def leave(self, request: Any, context: grpc.ServicerContext) -> pb.Ack:
        with _status(context, "Leave"):
            peer = self._peer(context, "Leave")
            auth, reason = _checked(request)
            self.coord.leave(auth, reason, peer_id=peer)
            return pb.Ack()
        raise AssertionError("unreachable")


def _decline_args(m: pb.DeclineRequest) -> tuple[NodeAuth, int, str]:
    return serde.auth_from_proto(m.auth), m.round, m.reason


def generic_handler(servicer: CoordinatorServicer) -> grpc.GenericRpcHandler:
    auth_of = serde.auth_from_proto
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.join,
            request_deserializer=_proto(pb.JoinRequest, serde.join_request_from_proto),
            response_serializer=_serialize,
        ),
        "PullTask": grpc.unary_stream_rpc_method_handler(
            servicer.pull_task,
            request_deserializer=_proto(pb.PullTaskRequest, lambda m: (auth_of(m.auth), m.wait_s)),
            response_serializer=_serialize,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.push_update,
            request_deserializer=_safe(serde.update_message_from_bytes),
            response_serializer=_serialize,
        ),
        "ReportEvaluation": grpc.unary_unary_rpc_method_handler(
            servicer.report_evaluation,
            request_deserializer=_proto(pb.EvaluationReport, serde.evaluation_report_from_proto),
            response_serializer=_serialize,
        ),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            servicer.heartbeat,
            request_deserializer=_proto(pb.HeartbeatRequest, lambda m: auth_of(m.auth)),
            response_serializer=_serialize,
        ),
        "SecAggStep": grpc.unary_unary_rpc_method_handler(
            servicer.secagg_step,
            request_deserializer=_proto(pb.SecAggRequest, serde_secagg.request_from_proto),
            response_serializer=_serialize,
        ),
        "Leave": grpc.unary_unary_rpc_method_handler(
            servicer.leave,
            request_deserializer=_proto(pb.LeaveRequest, lambda m: (auth_of(m.auth), m.reason)),
            response_serializer=_serialize,
        ),
        "DeclineTask": grpc.unary_unary_rpc_method_handler(
            servicer.decline_task,
            request_deserializer=_proto(pb.DeclineRequest, _decline_args),
            response_serializer=_serialize,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
