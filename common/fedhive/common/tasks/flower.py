"""Bring your Flower code: an unchanged Flower ``ClientApp`` (or legacy ``client_fn``) as a task.

Needs the optional extra ``fedhive[flower]`` (flwr); nothing else in fedhive imports flwr.

Task args (``task_args`` / ``--task-arg``):

* ``app``: the Flower app, ``package.module:attr``: a ``ClientApp`` (Message API handlers
  ``@app.train()`` / ``@app.evaluate()``, or one built as ``ClientApp(client_fn=...)``) or a
  legacy ``client_fn(context) -> Client`` (e.g. ``FlowerClient().to_client()`` of a NumPyClient).
  Needed on nodes; the coordinator does not load it.
* ``init``: where the initial model comes from, on the coordinator *and* on every node (a node
  needs the names, dtypes and shapes of what travels): ``package.module:attr`` naming an
  ``ArrayRecord``, a ``torch.nn.Module``, a list of NumPy arrays or a dict name -> array, or a
  callable with no arguments returning one of these (a model class such as ``task:Net`` works:
  its ``state_dict()`` travels, as ``ArrayRecord(Net().state_dict())`` would in a ServerApp).
  It is called with torch's generator seeded by the run's ``seed`` (``fedhive server --seed``,
  default 0), so ``torch.manual_seed(seed); Net()`` in a ServerApp builds the same weights.
  A list travels under the names ``"0"``, ``"1"``, ... (``ArrayRecord.from_numpy_ndarrays``).
  Or a ``.safetensors`` file (e.g. a fedhive checkpoint ``models/round-NNNN.safetensors``): its
  tensors, in the file's order.
* ``examples``: the example count the node declares at join, an upper bound on what its replies
  may claim (the app's data is loaded by the app, on its first message); default 1,000,000, the
  coordinator's default ``max_node_examples``.
* every other key goes to ``context.node_config``, e.g. ``partition-id=0``, ``num-partitions=4``
  (``fedhive simulate --flower-app`` sets these two for each node).

Each round the app receives what Flower's ``FedAvg`` strategy sends: a Message of type ``train``
(or ``evaluate``) whose content holds ``"arrays"`` (ArrayRecord, the global model) and
``"config"`` (ConfigRecord: the coordinator's ``[train]`` table plus ``"server-round"``). The
same ``[train]`` table is ``context.run_config`` (run-wide settings such as ``local-epochs``).
The reply's one ArrayRecord is the update, its MetricRecord's ``"num-examples"`` the example count
and its other numbers the metrics. A legacy ``client_fn`` gets ``FitIns`` / ``EvaluateIns``
(parameters in the order above, the same config). One ``Context`` lives as long as the node:
``context.state`` survives across rounds. Refused at start: query handlers, custom message types
(``@app.train("name")``), mods; these have no fedhive counterpart.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedhive.common.api.task import EvalResult, FitResult, Scalar, TaskContext
from fedhive.common.config import FLOWER_TASK
from fedhive.common.data.safetensors_io import SafetensorsFile
from fedhive.common.errors import FedhiveError, TaskError
from fedhive.common.runtime.imports import import_object
from fedhive.common.wire.tensors import tensor_from_bytes

TASK_PATH = FLOWER_TASK
APP_ARG, INIT_ARG, EXAMPLES_ARG = "app", "init", "examples"
RESERVED_ARGS = frozenset({APP_ARG, INIT_ARG, EXAMPLES_ARG})
DEFAULT_DECLARED_EXAMPLES = 1_000_000  # ServerConfig.max_node_examples' default
ROUND_KEY = "server-round"  # what flwr's strategies put into the round's ConfigRecord
NUM_EXAMPLES_KEY = "num-examples"  # what flwr's strategies weigh replies by
FEDHIVE_KEYS = frozenset({"round", "evaluate"})  # fedhive's own config keys, not the app's
MESSAGE_TTL_S = 3600.0
HANDLED = frozenset({"train.default", "evaluate.default"})
SAFETENSORS_SUFFIX = ".safetensors"


@contextmanager
def _quiet() -> Iterator[None]:
    """flwr's own modules raise DeprecationWarnings (click, its compat layer): not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@functools.cache
def flwr_modules() -> SimpleNamespace:
    """flwr's app, clientapp, common and compat modules, or a TaskError saying how to get them."""
    try:
        with _quiet():
            from flwr import app, clientapp, common
            from flwr.compat.common import recorddict_compat
    except ImportError as exc:
        raise TaskError(
            f"the Flower task needs flwr: pip install 'fedhive[flower]' ({exc})"
        ) from exc
    return SimpleNamespace(app=app, clientapp=clientapp, common=common, compat=recorddict_compat)


def load_object(path: str, what: str) -> Any:
    hint = " (the app must be importable by this Python: installed, or its folder on PYTHONPATH)"
    with _quiet():
        obj = import_object(path, what, TaskError, hint, form="name")
    if obj is None:
        module_name, _, attr = str(path).partition(":")
        raise TaskError(f"{what} module {module_name!r} has no {attr!r}")
    return obj


def load_client_app(path: str) -> tuple[Any, bool]:
    """The ``ClientApp`` named by ``path`` (a bare ``client_fn`` wrapped as Flower does) and
    whether it is legacy (``client_fn``). Refuses what fedhive rounds cannot serve."""
    fl = flwr_modules()
    obj = load_object(path, "Flower app")
    if not isinstance(obj, fl.clientapp.ClientApp):
        if not callable(obj):
            raise TaskError(f"{path} is neither a Flower ClientApp nor a client_fn")
        with _quiet():
            obj = fl.clientapp.ClientApp(client_fn=obj)
    refuse_unmapped(obj, path)
    return obj, obj._call is not None


def refuse_unmapped(app: Any, path: str) -> None:
    """Query handlers, custom message types and mods have no fedhive counterpart."""
    if app._mods:
        names = ", ".join(getattr(m, "__name__", repr(m)) for m in app._mods)
        raise TaskError(
            f"{path}: mods ({names}) are not supported by fedhive's Flower adapter: fedhive "
            "runs secure aggregation (secure_aggregation) and clipping itself; remove the mods"
        )
    if app._call is not None:
        return
    funcs: dict[str, Callable[..., Any]] = app._registered_funcs
    other = sorted(set(funcs) - HANDLED)
    if other:
        raise TaskError(
            f"{path}: handlers {', '.join(other)} are not supported: fedhive sends only train "
            "and evaluate messages (no query, no custom message types)"
        )
    wrapped = [name for name, fn in funcs.items() if "make_ffn" in fn.__qualname__]
    if wrapped:
        raise TaskError(f"{path}: handler mods ({', '.join(wrapped)}) are not supported")
    if "train.default" not in funcs:
        raise TaskError(f"{path}: the ClientApp has no @app.train() handler")


def initial_arrays(path: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The initial model named by ``init``, as name -> NumPy array (see the module docstring);
    a callable is called with torch's generator seeded by ``seed`` (and restored after)."""
    if path.endswith(SAFETENSORS_SUFFIX):
        return safetensors_arrays(Path(path))
    fl = flwr_modules()
    obj = load_object(path, "initial model (init)")
    if callable(obj) and not isinstance(obj, nn.Module):
        try:
            with _quiet(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                obj = obj()
        except Exception as exc:
            raise TaskError(f"init {path}() failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, fl.app.ArrayRecord):
        with _quiet():
            out = {name: array.numpy() for name, array in obj.items()}
    elif isinstance(obj, Mapping):
        out = {str(k): _to_numpy(v) for k, v in obj.items()}
    elif isinstance(obj, list | tuple):
        out = {str(i): _to_numpy(v) for i, v in enumerate(obj)}
    else:
        raise TaskError(
            f"init {path} gave a {type(obj).__name__}: expected an ArrayRecord, a torch Module, "
            "a list of NumPy arrays or a dict name -> array"
        )
    if not out:
        raise TaskError(f"init {path} gave no arrays")
    return out


def safetensors_arrays(path: Path) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors by name, in the file's order."""
    try:
        stored = SafetensorsFile(path)
        try:
            tensors = {
                spec.name: tensor_from_bytes(spec, buf)
                for spec, buf in zip(stored.specs, stored.buffers(), strict=True)
            }
        finally:
            stored.close()
    except (OSError, ValueError, KeyError, TypeError, FedhiveError) as exc:
        raise TaskError(f"init {path}: cannot read the initial model: {exc}") from exc
    if not tensors:
        raise TaskError(f"init {path} holds no tensors")
    bf16 = [name for name, t in tensors.items() if t.dtype == torch.bfloat16]
    if bf16:
        raise TaskError(
            f"init {path}: {bf16[0]!r} is bfloat16, which a Flower ArrayRecord (NumPy arrays) "
            "cannot carry"
        )
    return {name: t.numpy() for name, t in tensors.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class FlowerModel(nn.Module):
    """The exchanged arrays, by Flower name (names may hold dots: a plain dict, not buffers)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.arrays = {name: torch.from_numpy(np.array(a, copy=True)) for name, a in arrays.items()}


class FlowerTask:
    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        args = dict(ctx.args)
        if INIT_ARG not in args:
            raise TaskError(
                "the Flower task needs --task-arg init=package.module:name (the initial model: "
                "an ArrayRecord, a torch Module or class, a list of arrays, or a function "
                "returning one), on the coordinator and on every node"
            )
        self.init = str(args[INIT_ARG])
        self.declared = int(args.get(EXAMPLES_ARG, DEFAULT_DECLARED_EXAMPLES))
        if self.declared <= 0:
            raise TaskError(f"examples must be > 0, got {self.declared}")
        self.app: Any = None
        self.legacy = False
        self.context: Any = None
        if ctx.role == "node":
            if APP_ARG not in args:
                raise TaskError("the Flower task needs --flower-app package.module:app on nodes")
            self.app, self.legacy = load_client_app(str(args[APP_ARG]))
            fl = flwr_modules()
            node_config = {k: v for k, v in args.items() if k not in RESERVED_ARGS}
            self.context = fl.app.Context(
                run_id=0, node_id=0, node_config=node_config, state=fl.app.RecordDict(),
                run_config={},
            )  # fmt: skip
        self._messages = 0

    # ------------------------------------------------------------------ the Task protocol

    def build_model(self) -> nn.Module:
        return FlowerModel(initial_arrays(self.init, self.ctx.seed))

    def exchanged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not isinstance(model, FlowerModel):
            raise TaskError("the Flower task exchanges only a FlowerModel's arrays")
        return model.arrays

    def num_examples(self) -> int:
        return self.declared if self.ctx.role == "node" else 0

    def validate_config(self, config: Mapping[str, Scalar]) -> None:
        if ROUND_KEY in config:
            raise TaskError(f"{ROUND_KEY!r} is set by fedhive each round: remove it from [train]")

    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        n, metrics = self._ask("train", model, config, write_back=True)
        return FitResult(num_examples=n, metrics=metrics)

    def evaluate(self, model: nn.Module, config: Mapping[str, Scalar]) -> EvalResult | None:
        if self.app is None:  # the coordinator: no held-out evaluation through a ClientApp
            return None
        if not self.legacy and "evaluate.default" not in self.app._registered_funcs:
            return None
        n, metrics = self._ask("evaluate", model, config, write_back=False)
        return EvalResult(num_examples=n, metrics=metrics)

    # ------------------------------------------------------------------ one message

    def _ask(
        self, kind: str, model: nn.Module, config: Mapping[str, Scalar], *, write_back: bool
    ) -> tuple[int, dict[str, float]]:
        fl = flwr_modules()
        state = self.exchanged(model)
        round_ = int(config.get("round", 0))
        app_config = {k: v for k, v in config.items() if k not in FEDHIVE_KEYS}
        self.context.run_config = dict(app_config)
        app_config[ROUND_KEY] = round_
        arrays = [t.detach().cpu().numpy() for t in state.values()]
        with _quiet():
            content = self._content(fl, kind, list(state), arrays, app_config)
            self._messages += 1
            metadata = fl.app.Metadata(
                run_id=0, message_id=f"fedhive-{self._messages}", src_node_id=0, dst_node_id=0,
                reply_to_message_id="", group_id=str(round_), created_at=time.time(),
                ttl=MESSAGE_TTL_S, message_type=kind,
            )  # fmt: skip
            message = fl.app.Message(content=content, metadata=metadata)
            try:
                reply = self.app(message, self.context)
            except TaskError:
                raise
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}"
                raise TaskError(f"the Flower app's {kind} failed: {what}") from exc
            if reply.has_error():
                raise TaskError(f"the Flower app's {kind} replied with an error: {reply.error}")
            if self.legacy:
                return self._legacy_reply(fl, kind, reply.content, state, write_back)
            return self._reply(fl, kind, reply.content, state, write_back)

    def _content(
        self, fl: Any, kind: str, names: list[str], arrays: list[np.ndarray], config: dict
    ) -> Any:
        if self.legacy:
            params = fl.common.ndarrays_to_parameters(arrays)
            if kind == "train":
                return fl.compat.fitins_to_recorddict(fl.common.FitIns(params, config), True)
            ins = fl.common.EvaluateIns(params, config)
            return fl.compat.evaluateins_to_recorddict(ins, True)
        pairs = zip(names, arrays, strict=True)
        record = fl.app.ArrayRecord({n: fl.app.Array(a) for n, a in pairs})
        return fl.app.RecordDict({"arrays": record, "config": fl.app.ConfigRecord(config)})

    def _reply(
        self, fl: Any, kind: str, content: Any, state: dict[str, torch.Tensor], write_back: bool
    ) -> tuple[int, dict[str, float]]:
        metric_records = list(content.metric_records.values())
        if len(metric_records) != 1:
            raise TaskError(
                f"the Flower app's {kind} reply must hold one MetricRecord, it holds "
                f"{len(metric_records)}"
            )
        metrics = dict(metric_records[0])
        if NUM_EXAMPLES_KEY not in metrics:
            raise TaskError(
                f"the Flower app's {kind} reply has no {NUM_EXAMPLES_KEY!r} in its MetricRecord"
            )
        n = _count(metrics.pop(NUM_EXAMPLES_KEY), kind)
        if write_back:
            records = list(content.array_records.values())
            if len(records) != 1:
                raise TaskError(
                    f"the Flower app's train reply must hold one ArrayRecord, it holds "
                    f"{len(records)}"
                )
            record = records[0]
            names = list(record.keys())
            if set(names) != set(state):
                if len(names) != len(state):
                    raise TaskError(
                        f"the Flower app's train reply holds {len(names)} arrays, the model "
                        f"{len(state)} ({', '.join(list(state)[:5])} ...)"
                    )
                # by position: ArrayRecord(list of arrays) names them "0", "1", ...
                mapping = dict(zip(state, names, strict=True))
            else:
                mapping = {name: name for name in state}
            _write(state, {name: record[src].numpy() for name, src in mapping.items()})
        return n, _numbers(metrics)

    def _legacy_reply(
        self, fl: Any, kind: str, content: Any, state: dict[str, torch.Tensor], write_back: bool
    ) -> tuple[int, dict[str, float]]:
        if kind == "train":
            res = fl.compat.recorddict_to_fitres(content, False)
            arrays = fl.common.parameters_to_ndarrays(res.parameters)
            if len(arrays) != len(state):
                raise TaskError(
                    f"the Flower client's fit returned {len(arrays)} arrays, the model has "
                    f"{len(state)}"
                )
            _write(state, dict(zip(state, arrays, strict=True)))
            return _count(res.num_examples, kind), _numbers(dict(res.metrics))
        res = fl.compat.recorddict_to_evaluateres(content)
        return _count(res.num_examples, kind), _numbers({"loss": res.loss, **dict(res.metrics)})


def _count(value: Any, kind: str) -> int:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value != int(value) or value < 0:
        raise TaskError(
            f"the Flower app's {kind} reply: num-examples must be a whole number >= 0, "
            f"got {value!r}"
        )
    return int(value)


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """fedhive's metrics are numbers: lists and other values in a reply are left out."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _write(state: dict[str, torch.Tensor], arrays: Mapping[str, np.ndarray]) -> None:
    """Check the reply's arrays against the model (name, shape, dtype kind), then copy them in."""
    checked = {}
    for name, target in state.items():
        arr = np.asarray(arrays[name])
        if tuple(arr.shape) != tuple(target.shape):
            raise TaskError(
                f"the Flower app's reply: array {name!r} has shape {tuple(arr.shape)}, the model "
                f"{tuple(target.shape)}"
            )
        want = target.numpy().dtype
        if arr.dtype != want and arr.dtype.kind != want.kind:
            raise TaskError(
                f"the Flower app's reply: array {name!r} is {arr.dtype}, the model {want}"
            )
        checked[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=want))
    with torch.no_grad():
        for name, tensor in checked.items():
            state[name].copy_(tensor)


def make_task(ctx: TaskContext) -> FlowerTask:
    return FlowerTask(ctx)
