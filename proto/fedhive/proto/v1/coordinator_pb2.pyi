from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_WAIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_FINISH: _ClassVar[TaskKind]

class SecAggShareKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECAGG_SHARE_KIND_UNSPECIFIED: _ClassVar[SecAggShareKind]
    SECAGG_SHARE_KIND_SEED: _ClassVar[SecAggShareKind]
    SECAGG_SHARE_KIND_KEY: _ClassVar[SecAggShareKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_WAIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_FINISH: TaskKind
SECAGG_SHARE_KIND_UNSPECIFIED: SecAggShareKind
SECAGG_SHARE_KIND_SEED: SecAggShareKind
SECAGG_SHARE_KIND_KEY: SecAggShareKind

class NodeAuth(_message.Message):
    __slots__ = ("node_id", "token")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    token: bytes
    def __init__(self, node_id: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ConfigValue(_message.Message):
    __slots__ = ("bool_value", "int_value", "float_value", "string_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    float_value: float
    string_value: str
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ...) -> None: ...

class DeclineRequest(_message.Message):
    __slots__ = ("auth", "round", "reason")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    round: int
    reason: str
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("name", "device", "num_examples", "protocol_version", "identity_key", "identity_cert", "run_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_CERT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    num_examples: int
    protocol_version: int
    identity_key: bytes
    identity_cert: bytes
    run_id: str
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., num_examples: _Optional[int] = ..., protocol_version: _Optional[int] = ..., identity_key: _Optional[bytes] = ..., identity_cert: _Optional[bytes] = ..., run_id: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("auth", "run_id", "heartbeat_interval_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    run_id: str
    heartbeat_interval_s: float
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., run_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("auth", "wait_s")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    wait_s: float
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., wait_s: _Optional[float] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("run_id", "round", "kind", "config", "tensors", "payload_bytes", "chunk_size", "retry_after_s")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    kind: TaskKind
    config: _containers.MessageMap[str, ConfigValue]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    payload_bytes: int
    chunk_size: int
    retry_after_s: float
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., payload_bytes: _Optional[int] = ..., chunk_size: _Optional[int] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("tensor", "offset", "data")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensor: int
    offset: int
    data: bytes
    def __init__(self, tensor: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TaskTrailer(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    def __init__(self, digest: _Optional[bytes] = ...) -> None: ...

class TaskMessage(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: Chunk
    trailer: TaskTrailer
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., trailer: _Optional[_Union[TaskTrailer, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("auth", "round", "num_examples", "tensors")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    round: int
    num_examples: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class UpdateTrailer(_message.Message):
    __slots__ = ("digest", "metrics", "eval_metrics", "eval_examples", "dp_epsilon")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class EvalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EVAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    metrics: _containers.ScalarMap[str, float]
    eval_metrics: _containers.ScalarMap[str, float]
    eval_examples: int
    dp_epsilon: float
    def __init__(self, digest: _Optional[bytes] = ..., metrics: _Optional[_Mapping[str, float]] = ..., eval_metrics: _Optional[_Mapping[str, float]] = ..., eval_examples: _Optional[int] = ..., dp_epsilon: _Optional[float] = ...) -> None: ...

class UpdateMessage(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: Chunk
    trailer: UpdateTrailer
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., trailer: _Optional[_Union[UpdateTrailer, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("round", "bytes_received")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    round: int
    bytes_received: int
    def __init__(self, round: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("auth", "round", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    round: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("auth",)
    AUTH_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("round", "heartbeat_interval_s")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    round: int
    heartbeat_interval_s: float
    def __init__(self, round: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("auth", "reason")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    reason: str
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AwaitRunRequest(_message.Message):
    __slots__ = ("name", "device", "tasks", "wait_s", "last_run_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    wait_s: float
    last_run_id: str
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., wait_s: _Optional[float] = ..., last_run_id: _Optional[str] = ...) -> None: ...

class RunOffer(_message.Message):
    __slots__ = ("run_id", "task", "retry_after_s")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    retry_after_s: float
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class DeclineRunRequest(_message.Message):
    __slots__ = ("name", "run_id", "task", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    run_id: str
    task: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., run_id: _Optional[str] = ..., task: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SecAggKeyAdvert(_message.Message):
    __slots__ = ("node_id", "round", "c_pk", "s_pk", "seed_commitment", "signature", "identity_key", "identity_cert")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_CERT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    round: int
    c_pk: bytes
    s_pk: bytes
    seed_commitment: bytes
    signature: bytes
    identity_key: bytes
    identity_cert: bytes
    def __init__(self, node_id: _Optional[str] = ..., round: _Optional[int] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., identity_key: _Optional[bytes] = ..., identity_cert: _Optional[bytes] = ...) -> None: ...

class SecAggSealedShares(_message.Message):
    __slots__ = ("sender", "receiver", "round", "sealed")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    round: int
    sealed: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., round: _Optional[int] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "kind", "share", "signature")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    kind: SecAggShareKind
    share: bytes
    signature: bytes
    def __init__(self, owner: _Optional[str] = ..., kind: _Optional[_Union[SecAggShareKind, str]] = ..., share: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggAdverts(_message.Message):
    __slots__ = ("adverts",)
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    adverts: _containers.RepeatedCompositeFieldContainer[SecAggKeyAdvert]
    def __init__(self, adverts: _Optional[_Iterable[_Union[SecAggKeyAdvert, _Mapping]]] = ...) -> None: ...

class SecAggShareKeys(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggSealedShares]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggSealedShares, _Mapping]]] = ...) -> None: ...

class SecAggAwaitUnmask(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SecAggUnmask(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ...) -> None: ...

class SecAggPending(_message.Message):
    __slots__ = ("retry_after_s",)
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    retry_after_s: float
    def __init__(self, retry_after_s: _Optional[float] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("auth", "round", "wait_s", "advert", "share_keys", "await_unmask", "unmask")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ADVERT_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    AWAIT_UNMASK_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    auth: NodeAuth
    round: int
    wait_s: float
    advert: SecAggKeyAdvert
    share_keys: SecAggShareKeys
    await_unmask: SecAggAwaitUnmask
    unmask: SecAggUnmask
    def __init__(self, auth: _Optional[_Union[NodeAuth, _Mapping]] = ..., round: _Optional[int] = ..., wait_s: _Optional[float] = ..., advert: _Optional[_Union[SecAggKeyAdvert, _Mapping]] = ..., share_keys: _Optional[_Union[SecAggShareKeys, _Mapping]] = ..., await_unmask: _Optional[_Union[SecAggAwaitUnmask, _Mapping]] = ..., unmask: _Optional[_Union[SecAggUnmask, _Mapping]] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("round", "adverts", "shares", "unmask_request", "done", "pending")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    round: int
    adverts: SecAggAdverts
    shares: SecAggShareKeys
    unmask_request: SecAggUnmaskRequest
    done: Ack
    pending: SecAggPending
    def __init__(self, round: _Optional[int] = ..., adverts: _Optional[_Union[SecAggAdverts, _Mapping]] = ..., shares: _Optional[_Union[SecAggShareKeys, _Mapping]] = ..., unmask_request: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ..., done: _Optional[_Union[Ack, _Mapping]] = ..., pending: _Optional[_Union[SecAggPending, _Mapping]] = ...) -> None: ...
