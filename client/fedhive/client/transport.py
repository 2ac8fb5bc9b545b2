"""How a node talks to the coordinator: a small Protocol and its gRPC implementation.

The gRPC transport maps every ``grpc.RpcError`` to fedhive's exception tree at this boundary:
UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED -> TransportError (retry with backoff);
UNAUTHENTICATED -> UnknownNodeError (join again); PERMISSION_DENIED -> AccessDeniedError (this
node's certificate may not take part: stop); the other refusals by their status code.

Mutual TLS is the default: the channel presents this node's certificate and trusts only the
consortium CA. A TLS handshake the coordinator refuses surfaces as UNAVAILABLE; the error then says
what to check in this node's bundle. A handshake that fails for a reason retrying cannot fix (the
coordinator's certificate is not from this node's CA, or does not name the host dialed) raises
HandshakeRefused instead of TransportError: the node stops rather than retrying forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from fedhive.common.config import ClientConfig
from fedhive.common.crypto.pki import CertInfo, check_bundle, read_bytes
from fedhive.common.errors import (
    AccessDeniedError,
    ConfigError,
    DuplicateUpdateError,
    FedhiveError,
    HandshakeRefused,
    InvalidUpdateError,
    LimitExceededError,
    PkiError,
    StaleRoundError,
    TransportError,
    UnknownNodeError,
    UnknownRunError,
)
from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.wire import serde, serde_secagg, serde_standing
from fedhive.common.wire.chunks import MAX_CHUNK_SIZE, Chunk
from fedhive.common.wire.messages import (
    AwaitRunRequest,
    EvaluationReport,
    JoinReply,
    JoinRequest,
    NodeAuth,
    RunDecline,
    RunOffer,
    TaskMessage,
    UpdateMessage,
)
from fedhive.proto.v1 import coordinator_pb2 as pb

log = logging.getLogger("fedhive.client")

SERVICE = "/fedhive.proto.v1.Coordinator/"

_BY_CODE: dict[grpc.StatusCode, type[FedhiveError]] = {
    grpc.StatusCode.UNAUTHENTICATED: UnknownNodeError,
    grpc.StatusCode.FAILED_PRECONDITION: StaleRoundError,
    grpc.StatusCode.ALREADY_EXISTS: DuplicateUpdateError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceededError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidUpdateError,
    grpc.StatusCode.PERMISSION_DENIED: AccessDeniedError,
    grpc.StatusCode.NOT_FOUND: UnknownRunError,
}

TLS_HINT = (
    "the TLS handshake with the coordinator failed: check that this node's ca.crt is the "
    "consortium CA the coordinator uses, that node.crt was issued by it and is neither expired "
    "nor revoked (`fedhive certs list` at the operator), and that the coordinator's certificate "
    "names the host dialed (or set tls_server_name)"
)
_HANDSHAKE = ("socket closed", "handshake", "ssl", "certificate", "tsi_")
# failures that retrying cannot fix, as gRPC words them on this side of the handshake
HOSTNAME_MISMATCH = "hostname verification check failed"
UNTRUSTED_PEER = "certificate_verify_failed"
HOSTNAME_HINT = (
    "the coordinator's certificate does not name the host this node dialed: set "
    "--tls-server-name (tls_server_name) to a name it does hold (the --dns name given to "
    "`fedhive certs server`), or dial the coordinator by that name"
)
UNTRUSTED_HINT = (
    "this node cannot verify the coordinator's certificate: its ca.crt is not the CA that "
    "issued the coordinator's certificate (a bundle from another consortium?), or that "
    "certificate has expired. Ask the consortium operator for this node's bundle"
)


def _permanent_tls_hint(details: str) -> str | None:
    lowered = details.lower()
    if HOSTNAME_MISMATCH in lowered:
        return HOSTNAME_HINT
    if UNTRUSTED_PEER in lowered:
        return UNTRUSTED_HINT
    return None


def map_rpc_error(exc: grpc.RpcError, what: str, tls: bool = False) -> FedhiveError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, TransportError) if code is not None else TransportError
    name = code.name if code is not None else "UNKNOWN"
    hint = ""
    lowered = (details or "").lower()
    if tls and code == grpc.StatusCode.UNAVAILABLE:
        permanent = _permanent_tls_hint(details or "")
        if permanent is not None:  # stop: the next attempt fails the same way
            return HandshakeRefused(f"{what}: TLS handshake failed: {details} ({permanent})")
    if tls and code == grpc.StatusCode.UNAVAILABLE and any(h in lowered for h in _HANDSHAKE):
        hint = f" ({TLS_HINT})"
    return cls(f"{what}: {name}: {details}{hint}")


@dataclass(frozen=True)
class ClientTls:
    """This node's bundle, read and checked: its identity is the certificate's CN."""

    root: bytes
    key: bytes
    chain: bytes
    server_name: str | None
    identity: CertInfo

    @classmethod
    def from_config(cls, config: ClientConfig) -> ClientTls | None:
        """None in (explicit) insecure mode; a ConfigError saying what to fix otherwise."""
        if config.insecure:
            log.warning(
                "INSECURE MODE: plain-text gRPC to %s, no TLS; the coordinator cannot verify "
                "this node and nobody protects its updates in transit. Local tests only.",
                config.server,
            )
            return None
        files = {"tls_cert": config.tls_cert, "tls_key": config.tls_key, "tls_ca": config.tls_ca}
        missing = [name for name, path in files.items() if path is None]
        if missing:
            raise ConfigError(
                "mutual TLS is on by default and needs this node's certificate bundle: "
                f"{', '.join(missing)} not set. Give --tls-dir (the folder the consortium sent: "
                "ca.crt, node.crt, node.key) or --insecure for plain text (testing only)"
            )
        cert, key, ca = (Path(p) for p in files.values() if p is not None)
        try:
            identity = check_bundle(cert, key, ca)
            return cls(
                read_bytes(ca, "CA certificate"),
                read_bytes(key, "private key"),
                read_bytes(cert, "certificate"),
                config.tls_server_name,
                identity,
            )
        except PkiError as exc:
            raise ConfigError(f"this node's certificate bundle: {exc}") from exc


class Transport(Protocol):
    def join(self, request: JoinRequest) -> JoinReply: ...
    def pull(self, auth: NodeAuth, wait_s: float) -> Iterator[TaskMessage]: ...
    def push(self, messages: Iterable[UpdateMessage]) -> int: ...
    def report_evaluation(self, report: EvaluationReport) -> None: ...
    def heartbeat(self, auth: NodeAuth) -> tuple[int, float]: ...
    def leave(self, auth: NodeAuth, reason: str) -> None: ...
    def decline(self, auth: NodeAuth, round_: int, reason: str) -> None: ...
    def secagg_step(self, request: SecAggRequest) -> SecAggReply: ...
    def await_run(self, request: AwaitRunRequest) -> RunOffer: ...
    def decline_run(self, decline: RunDecline) -> None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def _identity(buf: bytes) -> bytes:
    return buf


def _update_bytes(msg: UpdateMessage) -> bytes:
    if isinstance(msg, Chunk):
        return serde.update_chunk_bytes(msg)
    return serde.update_message_to_proto(msg).SerializeToString()


class GrpcTransport:
    def __init__(
        self, address: str, *, tls: ClientTls | None = None, timeout_s: float = 30.0
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.tls = tls is not None
        limit = MAX_CHUNK_SIZE + (1 << 20)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 0),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            creds = grpc.ssl_channel_credentials(tls.root, tls.key, tls.chain)
            self._channel = grpc.secure_channel(address, creds, options=options)
        ser = lambda m: m.SerializeToString()  # noqa: E731
        self._join = self._channel.unary_unary(
            SERVICE + "Join", request_serializer=ser, response_deserializer=pb.JoinReply.FromString
        )
        self._pull = self._channel.unary_stream(
            SERVICE + "PullTask", request_serializer=ser, response_deserializer=_identity
        )
        self._push = self._channel.stream_unary(
            SERVICE + "PushUpdate",
            request_serializer=_identity,
            response_deserializer=pb.PushReply.FromString,
        )
        self._report = self._channel.unary_unary(
            SERVICE + "ReportEvaluation",
            request_serializer=ser,
            response_deserializer=pb.Ack.FromString,
        )
        self._heartbeat = self._channel.unary_unary(
            SERVICE + "Heartbeat",
            request_serializer=ser,
            response_deserializer=pb.HeartbeatReply.FromString,
        )
        self._leave = self._channel.unary_unary(
            SERVICE + "Leave", request_serializer=ser, response_deserializer=pb.Ack.FromString
        )
        self._decline = self._channel.unary_unary(
            SERVICE + "DeclineTask", request_serializer=ser, response_deserializer=pb.Ack.FromString
        )
        self._secagg = self._channel.unary_unary(
            SERVICE + "SecAggStep",
            request_serializer=ser,
            response_deserializer=pb.SecAggReply.FromString,
        )
        self._await = self._channel.unary_unary(
            SERVICE + "AwaitRun",
            request_serializer=ser,
            response_deserializer=pb.RunOffer.FromString,
        )
        self._decline_run = self._channel.unary_unary(
            SERVICE + "DeclineRun", request_serializer=ser, response_deserializer=pb.Ack.FromString
        )
        self._active: Any = None
        self._cancelled = False  # cancel() was called (SIGTERM): every later long call ends too
        # re-entrant: cancel() runs in a signal handler, on the main thread, which may be inside
        # one of the blocks below when the signal arrives (a plain Lock would deadlock it)
        self._lock = threading.RLock()

    def join(self, request: JoinRequest) -> JoinReply:
        try:
            reply = self._join(serde.join_request_to_proto(request), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "join", self.tls) from exc
        return serde.join_reply_from_proto(reply)

    def pull(self, auth: NodeAuth, wait_s: float) -> Iterator[TaskMessage]:
        call = self._pull(pb.PullTaskRequest(auth=serde.auth_to_proto(auth), wait_s=wait_s))
        self._register(call)
        try:
            for buf in call:
                yield serde.task_message_from_bytes(buf)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "pull", self.tls) from exc
        finally:
            with self._lock:
                self._active = None

    def push(self, messages: Iterable[UpdateMessage]) -> int:
        try:
            reply = self._push(_update_bytes(m) for m in messages)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "push", self.tls) from exc
        return int(reply.bytes_received)

    def report_evaluation(self, report: EvaluationReport) -> None:
        try:
            self._report(serde.evaluation_report_to_proto(report), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "report evaluation", self.tls) from exc

    def heartbeat(self, auth: NodeAuth) -> tuple[int, float]:
        try:
            reply = self._heartbeat(
                pb.HeartbeatRequest(auth=serde.auth_to_proto(auth)), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "heartbeat", self.tls) from exc
        return int(reply.round), float(reply.heartbeat_interval_s)

    def decline(self, auth: NodeAuth, round_: int, reason: str) -> None:
        request = pb.DeclineRequest(auth=serde.auth_to_proto(auth), round=round_, reason=reason)
        try:
            self._decline(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "decline", self.tls) from exc

    def leave(self, auth: NodeAuth, reason: str) -> None:
        try:
            self._leave(pb.LeaveRequest(auth=serde.auth_to_proto(auth), reason=reason), timeout=5.0)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "leave", self.tls) from exc

    def secagg_step(self, request: SecAggRequest) -> SecAggReply:
        """One SecAgg+ step; the coordinator answers within ``wait_s`` (maybe ``Pending``)."""
        try:
            reply = self._secagg(
                serde_secagg.request_to_proto(request), timeout=self.timeout_s + request.wait_s
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "secagg step") from exc
        return serde_secagg.reply_from_proto(reply)

    def await_run(self, request: AwaitRunRequest) -> RunOffer:
        """A standing node waits (up to ``wait_s``) for a run it may take part in."""
        call = self._await.future(
            serde_standing.await_run_to_proto(request), timeout=self.timeout_s + request.wait_s
        )
        self._register(call)
        try:
            reply = call.result()
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "await run", self.tls) from exc
        except grpc.FutureCancelledError as exc:
            raise TransportError("await run: cancelled") from exc
        finally:
            with self._lock:
                self._active = None
        return serde_standing.run_offer_from_proto(reply)

    def decline_run(self, decline: RunDecline) -> None:
        try:
            self._decline_run(serde_standing.run_decline_to_proto(decline), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, "decline run", self.tls) from exc

    def _register(self, call: Any) -> None:
        """Make ``call`` the long call in flight; one started after :meth:`cancel` (the signal
        landed between the caller's stop check and this call) is cancelled at once."""
        with self._lock:
            self._active = call
            if self._cancelled:
                call.cancel()

    def cancel(self) -> None:
        """Cancel the pull (or the wait for a run) in flight, and any started later (SIGTERM)."""
        with self._lock:
            self._cancelled = True
            if self._active is not None:
                self._active.cancel()

    def close(self) -> None:
        self._channel.close()
