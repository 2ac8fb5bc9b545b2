"""Domain types of the wire contract (what serde turns protobuf messages into)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedhive.common.wire.chunks import Chunk
from fedhive.common.wire.tensors import TensorSpec

ConfigScalar = bool | int | float | str
PROTOCOL_VERSION = 1


class TaskKind(enum.IntEnum):
    WAIT = 1
    TRAIN = 2
    EVALUATE = 3
    FINISH = 4


@dataclass(frozen=True)
class NodeAuth:
    node_id: str
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class JoinRequest:
    name: str
    device: str = "cpu"
    num_examples: int = 0
    protocol_version: int = PROTOCOL_VERSION
    identity_key: bytes = b""  # Ed25519 public key (32 bytes) for secure aggregation
    identity_cert: bytes = b""  # under mutual TLS: the CA's certificate for it (DER)
    run_id: str = ""  # a standing node: the run it was offered ("" = whatever runs)


@dataclass(frozen=True)
class JoinReply:
    auth: NodeAuth
    run_id: str
    heartbeat_interval_s: float


@dataclass(frozen=True)
class TaskHeader:
    run_id: str
    round: int
    kind: TaskKind
    config: Mapping[str, ConfigScalar] = field(default_factory=dict)
    tensors: tuple[TensorSpec, ...] = ()
    payload_bytes: int = 0
    chunk_size: int = 0
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class TaskTrailer:
    digest: bytes


@dataclass(frozen=True)
class UpdateHeader:
    auth: NodeAuth
    round: int
    num_examples: int
    tensors: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class UpdateTrailer:
    digest: bytes
    metrics: Mapping[str, float] = field(default_factory=dict)
    eval_metrics: Mapping[str, float] = field(default_factory=dict)
    eval_examples: int = 0
    dp_epsilon: float | None = None  # DP-SGD: the node's epsilon so far (a bounded claim)


@dataclass(frozen=True)
class EvaluationReport:
    auth: NodeAuth
    round: int
    num_examples: int
    metrics: Mapping[str, float]


TaskMessage = TaskHeader | Chunk | TaskTrailer
UpdateMessage = UpdateHeader | Chunk | UpdateTrailer


# ----------------------------------------------------------------------------- standing nodes


@dataclass(frozen=True)
class AwaitRunRequest:
    """A standing node waits for its next run (and says what it approved)."""

    name: str
    device: str = ""
    tasks: tuple[str, ...] = ()
    wait_s: float = 0.0
    last_run_id: str = ""


@dataclass(frozen=True)
class RunOffer:
    """The run a standing node may take part in now ("" run_id: none yet)."""

    run_id: str = ""
    task: str = ""
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class RunDecline:
    """A standing node will not take part in a run, and why."""

    name: str
    run_id: str
    task: str
    reason: str
