"""Validated configuration (pydantic, ``frozen=True, extra="forbid"``), loaded from TOML + flags.

A misspelled or out-of-range setting is a :class:`~fedhive.common.errors.ConfigError` that names
the field; nothing is silently ignored.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedhive.common.api.pipeline import CoordinatorPipelineSettings, PipelineSettings
from fedhive.common.errors import ConfigError
from fedhive.common.privacy.distributed import check_settings
from fedhive.common.privacy.settings import DPSettings, check_run
from fedhive.common.privacy.sgd import check_train as check_sgd_train
from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.status_config import StatusConfig
from fedhive.common.wire.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE

Scalar = bool | int | float | str
FLOWER_TASK = "fedhive.common.tasks.flower:make_task"  # serves a Flower ClientApp (flower_app)


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class ServerConfig(_Config):
    """Everything the coordinator needs for one run."""

    address: str = "127.0.0.1:8765"
    run_dir: Path = Path("runs/latest")
    task: str = "fedhive.common.tasks.digits:make_task"
    task_args: dict[str, Scalar] = Field(default_factory=dict)
    seed: int = 0
    rounds: int = Field(default=10, ge=1)
    min_nodes: int = Field(default=2, ge=1)
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    min_updates: int | None = Field(default=None, ge=1)
    round_timeout_s: float = Field(default=600.0, gt=0)
    join_timeout_s: float = Field(default=3600.0, gt=0)
    on_failed_round: Literal["retry", "stop"] = "retry"
    max_round_retries: int = Field(default=3, ge=0)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=MAX_CHUNK_SIZE)
    max_update_bytes: int | None = Field(default=None, ge=1)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    train: dict[str, Scalar] = Field(default_factory=dict)
    # the aggregation rule: a built-in name (fedhive.server.strategy.registry) or
    # package.module:factory; its arguments are validated by the coordinator before the run exists
    strategy: str = Field(default="fedavg", min_length=1)
    strategy_args: dict[str, Scalar] = Field(default_factory=dict)
    federated_evaluation: bool = True
    eval_data: Path | None = None
    device: str = "cpu"
    spool_dir: Path | None = None
    spool_memory_bytes: int | None = Field(default=None, ge=0)
    # How long an upload waits for its share of spool_memory_bytes (its stream held back by flow
    # control) before it is staged in a temporary file instead.
    spool_wait_s: float = Field(default=5.0, ge=0)
    # HTTP/2 receive window per upload stream: bounds what a held-back upload buffers in the
    # coordinator; one upload's throughput is at most window / round-trip time (4 MiB at 50 ms:
    # 80 MB/s). None: gRPC's auto-tuning (bandwidth-delay probes; windows of many MB).
    receive_window_bytes: int | None = Field(default=4 << 20, ge=64 << 10, le=(1 << 31) - 1)
    # Largest model whose encoded broadcast stays in memory (shared by every node's pull); a
    # larger one is streamed to the nodes from its committed checkpoint file. None: 1 GiB.
    broadcast_memory_bytes: int | None = Field(default=None, ge=0)
    max_workers: int = Field(default=256, ge=4)
    # Of the max_workers call slots, this many stay free for short calls (join, heartbeat,
    # leave ...): pulls, uploads and secure steps share the rest. None: max_workers // 8, >= 2.
    rpc_reserve: int | None = Field(default=None, ge=1)
    # An upload must send its header within header_timeout_s, then each next message within
    # upload_idle_timeout_s, or it is cut off (and the round stops waiting for it).
    header_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    upload_idle_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # A node's example count is its own claim, and its update's weight: a node may declare at
    # most max_node_examples at join, and an update may claim no more than its node declared.
    max_node_examples: int = Field(default=1_000_000, ge=1)
    # The node registry holds at most max_registered_nodes; a node silent for node_expiry_s (and
    # heartbeat_timeout_s), or one that left, is forgotten; a join beyond the cap is refused.
    max_registered_nodes: int = Field(default=1024, ge=1)
    node_expiry_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    progress: bool = True
    # Secure aggregation (fedhive.common.secagg): "none" or "secagg+"; nodes follow the coordinator.
    secure_aggregation: Literal["none", "secagg+"] = "none"
    secagg_clip: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    secagg_bits: int = Field(default=16, ge=1, le=31)
    secagg_max_weight: int = Field(default=1024, ge=1)
    secagg_degree: int | None = Field(default=None, ge=1)
    secagg_threshold: int | None = Field(default=None, ge=1)
    secagg_step_timeout_s: float = Field(default=120.0, gt=0)
    # mutual TLS (the default): the coordinator's bundle from `fedhive certs server`
    insecure: bool = False
    tls_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    crl: Path | None = None
    allowed_nodes: tuple[str, ...] | None = None
    # differential privacy ([dp]: fedhive.common.privacy.settings); None: none
    dp: DPSettings | None = None
    # the status page and /metrics (fedhive.common.status_config); None: off
    status: StatusConfig | None = None
    # user stages on each update and on the round's result ([pipeline] update / aggregate =
    # ["package.module:Stage"]), imported and checked at start (fedhive.server.pipeline)
    pipeline: CoordinatorPipelineSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _bundle(cls, data: Any) -> Any:
        return _fill_bundle(data, "server", crl=True)

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be larger than heartbeat_interval_s")
        if self.min_updates is not None and self.min_updates > self.min_nodes:
            raise ValueError(
                f"min_updates ({self.min_updates}) cannot exceed min_nodes ({self.min_nodes})"
            )
        _check_task_path(self.task)
        if self.stream_budget() < 1:
            raise ValueError(
                f"rpc_reserve ({self.rpc_reserve}) must leave stream slots of max_workers "
                f"({self.max_workers})"
            )
        if self.max_registered_nodes < self.min_nodes:
            raise ValueError(
                f"max_registered_nodes ({self.max_registered_nodes}) is below min_nodes "
                f"({self.min_nodes})"
            )
        distributed = self.dp is not None and self.dp.distributed is not None
        if self.secure_aggregation == "secagg+" and not distributed:  # DP: its own grid
            try:
                self.secagg_quantization().check(self.min_nodes)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if self.dp is not None and self.dp.distributed is not None:
            if self.secure_aggregation != "secagg+":
                raise ValueError(
                    "dp.distributed adds the noise inside secure aggregation: it needs "
                    "secure_aggregation = 'secagg+'"
                )
            try:
                check_settings(self.dp.distributed, self.min_nodes)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        _check_insecure(self, ("tls_dir", "tls_cert", "tls_key", "tls_ca", "crl"))
        check_run(self.dp, secure_aggregation=self.secure_aggregation, min_nodes=self.min_nodes)
        check_sgd_train(self.dp, self.train)
        if self.pipeline is not None and self.pipeline.update and self.secure_aggregation != "none":
            raise ValueError(
                f"[pipeline] update = {list(self.pipeline.update)} runs on each node's update, "
                f"but secure_aggregation = {self.secure_aggregation!r} never shows the "
                "coordinator one node's update: put the stage on the nodes ([pipeline] node in "
                "their config), or run it on the round's result ([pipeline] aggregate)"
            )
        allowed = self.allowed_nodes
        if allowed is not None and (not allowed or not all(n.strip() for n in allowed)):
            raise ValueError(
                "allowed_nodes is empty or holds an empty id: nobody could join; leave it out "
                "to let every certificate of the consortium CA join"
            )
        return self

    def stream_budget(self) -> int:
        """Call slots for streams (pulls, uploads, secure steps): max_workers less the reserve."""
        reserve = self.rpc_reserve
        if reserve is None:
            reserve = max(2, self.max_workers // 8)
        return self.max_workers - reserve

    def secagg_quantization(self) -> QuantConfig:
        """The quantization of a secure-aggregation run (the overflow bound is checked per round
        against the number of selected nodes, and here against ``min_nodes``)."""
        try:
            return QuantConfig(self.secagg_clip, self.secagg_bits, self.secagg_max_weight)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class ApprovedTask(_Config):
    """What a site runs for one task it approved (a standing node's ``[tasks."pkg.mod:factory"]``
    table): its data folder and the task factory's arguments."""

    data_dir: Path | None = None
    task_args: dict[str, Scalar] = Field(default_factory=dict)
    seed: int | None = None


class ClientConfig(_Config):
    """Everything a node needs to join a run."""

    server: str = "127.0.0.1:8765"
    task: str = "fedhive.common.tasks.digits:make_task"
    task_args: dict[str, Scalar] = Field(default_factory=dict)
    data_dir: Path | None = None
    name: str = Field(default_factory=socket.gethostname, min_length=1)
    device: str = "auto"
    # torch intra-op threads; None: OMP_NUM_THREADS, else the usable CPUs shared among the
    # fedhive nodes on this machine (fedhive.client.threads)
    threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    max_connect_attempts: int | None = Field(default=None, ge=1)
    poll_wait_s: float = Field(default=30.0, gt=0)
    # mutual TLS (the default): this node's bundle from `fedhive certs node`
    insecure: bool = False
    tls_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    # an unchanged Flower ClientApp (or legacy client_fn), package.module:app, as this node's task:
    # sets task to FLOWER_TASK and task_args["app"] (fedhive.common.tasks.flower)
    flower_app: str | None = None
    # DP-SGD: this site's own budget wins (fedhive.common.privacy.sgd): a round that would take
    # the node past max_epsilon (at dp_delta, default the run's delta) is declined. The node's
    # ledger of what it spent is state_dir/dp-ledger.json (state_dir default: data_dir).
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    dp_delta: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    # distributed DP: the least noise multiplier this site accepts on a sum its update goes into
    # (counted at the secure round's threshold of survivors); a round with less is declined
    dp_min_noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    state_dir: Path | None = None
    # A standing node: the tasks this site approved, by import path ("package.module:factory"),
    # each with its data and arguments. Given, the node stays connected and takes part in run
    # after run, each with the approved task the run names; it declines any other task and never
    # imports it (fedhive.client.standing). Empty: a one-shot node of `task`.
    tasks: dict[str, ApprovedTask] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bundle(cls, data: Any) -> Any:
        return _fill_bundle(data, "node", crl=False)

    @model_validator(mode="before")
    @classmethod
    def _flower(cls, data: Any) -> Any:
        return flower_task(data)

    # Ed25519 identity key for secure aggregation (PEM or 32 raw bytes); absent: one per process.
    # Under mutual TLS, identity.key and identity.crt of the bundle folder (`tls_dir`): the key
    # and the CA's certificate for it, which peers check (see fedhive.common.crypto.pki).
    identity_key: Path | None = None
    identity_cert: Path | None = None
    # user stages on this node's update ([pipeline] node = ["package.module:Stage"]), checked
    # at start (fedhive.common.api.pipeline)
    pipeline: PipelineSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> ClientConfig:
        _check_task_path(self.task)
        for path in self.tasks:
            _check_task_path(path)
        _check_insecure(self, ("tls_dir", "tls_cert", "tls_key", "tls_ca", "identity_cert"))
        if self.identity_cert is not None and self.identity_key is None:
            raise ValueError("identity_cert needs the identity_key it certifies")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


def _fill_bundle(data: Any, kind: str, *, crl: bool) -> Any:
    """``tls_dir`` names a bundle folder: fill the file settings not given explicitly."""
    if not isinstance(data, dict) or data.get("tls_dir") is None:
        return data
    folder = Path(data["tls_dir"])
    out = dict(data)
    files = {"tls_cert": f"{kind}.crt", "tls_key": f"{kind}.key", "tls_ca": "ca.crt"}
    if crl and (folder / "crl.pem").exists():
        files["crl"] = "crl.pem"
    for key, name in files.items():
        if out.get(key) is None:
            out[key] = folder / name
    unset = out.get("identity_key") is None and out.get("identity_cert") is None
    present = (folder / "identity.crt").exists() and (folder / "identity.key").exists()
    if kind == "node" and unset and present:
        out["identity_key"] = folder / "identity.key"
        out["identity_cert"] = folder / "identity.crt"
    return out


def _check_insecure(config: _Config, tls_fields: tuple[str, ...]) -> None:
    given = [name for name in tls_fields if getattr(config, name) is not None]
    if getattr(config, "insecure", False) and given:
        raise ValueError(
            f"insecure = true turns TLS off, but {', '.join(given)} is set: choose one"
        )


def parse_assignments(items: list[str], flag: str) -> dict[str, Scalar] | None:
    """``KEY=VALUE`` flags -> a dict (true/false, int and float recognised; None when empty)."""
    if not items:
        return None
    out: dict[str, Scalar] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        value: Scalar = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out


def flower_task(data: Any) -> Any:
    """``flower_app`` names the node's Flower app: the task becomes the Flower adapter with the
    app among its ``task_args``; another ``task`` or another ``app`` task arg is a conflict."""
    if not isinstance(data, dict) or data.get("flower_app") is None:
        return data
    app = str(data["flower_app"])
    module, sep, attr = app.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"flower_app must look like 'package.module:app', got {app!r}")
    if data.get("task") not in (None, FLOWER_TASK):
        raise ValueError(
            f"flower_app runs the task {FLOWER_TASK}: drop task = {data['task']!r} (or flower_app)"
        )
    args = dict(data.get("task_args") or {})
    if args.get("app", app) != app:
        raise ValueError(f"flower_app {app!r} and task_args app = {args['app']!r} disagree")
    return {**data, "task": FLOWER_TASK, "task_args": {**args, "app": app}}


def _check_task_path(path: str) -> None:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"task must look like 'package.module:factory', got {path!r}")


C = TypeVar("C", bound=_Config)


def validation_problems(
    exc: ValidationError, unknown: str = "unknown setting (misspelled?)"
) -> list[str]:
    """One ``field: problem`` line per error of a pydantic model (``unknown``: a key it forbids)."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        problems.append(f"{loc}: {unknown if err['type'] == 'extra_forbidden' else err['msg']}")
    return problems


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    lines += [f"  {problem}" for problem in validation_problems(exc)]
    return "\n".join(lines)


def build_config(
    model: type[C],
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> C:
    """Start from ``base``, read ``path`` (TOML, optional), apply non-None ``overrides`` (CLI
    flags), validate."""
    data: dict[str, Any] = dict(base or {})
    source = "flags"
    if path is not None:
        source = str(path)
        try:
            data.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
