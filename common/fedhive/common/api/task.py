"""The user-facing task interface: model + data + training code, named by an import path.

A task is made by a factory ``package.module:factory`` called with a :class:`TaskContext`. The same
factory serves the coordinator (``role="server"``: initial model, optional held-out evaluation)
and every node (``role="node"``: local training and federated evaluation on private data)::

    def make_task(ctx: TaskContext) -> Task: ...

The node runtime owns everything else: joining, pulling the global model into the live model,
pushing the update, heartbeats, reconnects. The model object lives as long as the node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from fedhive.common.errors import TaskError
from fedhive.common.runtime.imports import import_object

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from fedhive.common.privacy.sgd import PrivacyLedger

Scalar = bool | int | float | str


@dataclass(frozen=True)
class TaskContext:
    role: Literal["server", "node"]
    data_dir: Path | None = None
    device: str = "cpu"
    seed: int = 0
    args: Mapping[str, Scalar] = field(default_factory=dict)
    # the node's DP-SGD ledger (its own budget): the shared training loop trains with DP-SGD when
    # the round asks for it (fedhive.common.privacy.sgd); a custom loop must do the same
    privacy: PrivacyLedger | None = None


@dataclass(frozen=True)
class FitResult:
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What a task provides; ``evaluate`` may return None when there is no data to evaluate on."""

    def build_model(self) -> torch.nn.Module: ...

    def num_examples(self) -> int: ...

    def fit(self, model: torch.nn.Module, config: Mapping[str, Scalar]) -> FitResult: ...

    def evaluate(
        self, model: torch.nn.Module, config: Mapping[str, Scalar]
    ) -> EvalResult | None: ...


def exchanged_state(model: torch.nn.Module, task: object | None = None) -> dict[str, torch.Tensor]:
    """The tensors that travel, in order, as live views of the model's storage.

    A task chooses by defining ``exchanged(model) -> dict[str, Tensor]`` (e.g. a LoRA task sends
    only the trainable adapters and head; the frozen base never travels). Otherwise: the model's
    state dict (parameters and buffers). Writing into the returned tensors updates the model.
    """
    choose = getattr(task, "exchanged", None)
    if choose is None:
        return dict(model.state_dict(keep_vars=False))
    state = choose(model)
    if not isinstance(state, dict) or not state:
        raise TaskError("task.exchanged(model) must return a non-empty dict of name -> tensor")
    return {name: t.detach() for name, t in state.items()}


def validate_config(task: object, config: Mapping[str, Scalar]) -> None:
    """Run the task's optional hook ``validate_config(config)`` on a training config as nodes
    receive it (the coordinator's ``[train]`` table plus ``round`` and ``evaluate``). The hook
    raises (preferably :class:`TaskError`) naming what is wrong; a task without it accepts
    anything here and finds out in ``fit``."""
    check = getattr(task, "validate_config", None)
    if check is None:
        return
    try:
        check(dict(config))
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"{type(exc).__name__}: {exc}") from exc


def load_task(path: str, ctx: TaskContext) -> Task:
    """Import ``package.module:factory`` and call it with ``ctx``."""
    factory: Callable[[TaskContext], Task] | None = import_object(path, "task", TaskError)
    if factory is None or not callable(factory):
        module_name, _, attr = path.partition(":")
        raise TaskError(f"task module {module_name!r} has no callable {attr!r}")
    try:
        task = factory(ctx)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task factory {path} failed: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {path} returned {type(task).__name__}, which lacks "
            "build_model/num_examples/fit/evaluate"
        )
    return task
