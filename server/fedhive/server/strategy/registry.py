"""Strategies by name: the built-ins, or ``package.module:factory`` (loaded like tasks).

A built-in's arguments are validated by its pydantic model (frozen, ``extra="forbid"``): a
misspelled argument is a :class:`~fedhive.common.errors.ConfigError` naming it, before a run is
created. A user's factory is called with the arguments as keywords and must return an
:class:`~fedhive.server.strategy.base.Aggregator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedhive.common.config import validation_problems
from fedhive.common.errors import ConfigError
from fedhive.common.runtime.imports import import_object
from fedhive.server.strategy.base import Aggregator
from fedhive.server.strategy.bulyan import Bulyan, BulyanArgs
from fedhive.server.strategy.fedadagrad import FedAdagrad, FedAdagradArgs
from fedhive.server.strategy.fedadam import FedAdam, FedAdamArgs
from fedhive.server.strategy.fedavg import FedAvg
from fedhive.server.strategy.fedavgm import FedAvgM, FedAvgMArgs
from fedhive.server.strategy.fedmedian import FedMedian
from fedhive.server.strategy.fedopt import ServerOptimizing
from fedhive.server.strategy.fedtrimmedavg import FedTrimmedAvg, FedTrimmedAvgArgs
from fedhive.server.strategy.fedyogi import FedYogi, FedYogiArgs
from fedhive.server.strategy.krum import Krum, MultiKrum, MultiKrumArgs
from fedhive.server.strategy.retaining import Retaining


class NoArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KrumOnlyArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    f: int = Field(default=0, ge=0, description="Byzantine nodes tolerated")


@dataclass(frozen=True)
class Builtin:
    args: type[BaseModel]
    build: Callable[[dict[str, Any], Path | None], Aggregator]
    paper: str
    sum_only: bool
    """True when the rule needs only the sum of the updates (it composes with SecAgg+)."""


BUILTINS: dict[str, Builtin] = {
    "fedavg": Builtin(NoArgs, lambda a, d: FedAvg(), "McMahan et al. 2017", True),
    "fedavgm": Builtin(
        FedAvgMArgs,
        lambda a, d: ServerOptimizing(FedAvgM(**a)),
        "Hsu et al. 2019",
        True,
    ),
    "fedadam": Builtin(
        FedAdamArgs, lambda a, d: ServerOptimizing(FedAdam(**a)), "Reddi et al. 2021", True
    ),
    "fedyogi": Builtin(
        FedYogiArgs, lambda a, d: ServerOptimizing(FedYogi(**a)), "Reddi et al. 2021", True
    ),
    "fedadagrad": Builtin(
        FedAdagradArgs,
        lambda a, d: ServerOptimizing(FedAdagrad(**a)),
        "Reddi et al. 2021",
        True,
    ),
    "fedmedian": Builtin(NoArgs, lambda a, d: Retaining(FedMedian(), d), "Yin et al. 2018", False),
    "fedtrimmedavg": Builtin(
        FedTrimmedAvgArgs,
        lambda a, d: Retaining(FedTrimmedAvg(**a), d),
        "Yin et al. 2018",
        False,
    ),
    "krum": Builtin(
        KrumOnlyArgs, lambda a, d: Retaining(Krum(**a), d), "Blanchard et al. 2017", False
    ),
    "multikrum": Builtin(
        MultiKrumArgs,
        lambda a, d: Retaining(MultiKrum(**a), d),
        "Blanchard et al. 2017",
        False,
    ),
    "bulyan": Builtin(
        BulyanArgs, lambda a, d: Retaining(Bulyan(**a), d), "El Mhamdi et al. 2018", False
    ),
}


def validate_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A built-in's arguments, validated (defaults filled); a user strategy's, as given."""
    builtin = BUILTINS.get(name)
    if builtin is None:
        if ":" not in name:
            known = ", ".join(sorted(BUILTINS))
            raise ConfigError(
                f"unknown strategy {name!r}: one of {known}, or package.module:factory"
            )
        return dict(args)
    try:
        return builtin.args.model_validate(dict(args)).model_dump()
    except ValidationError as exc:
        problems = validation_problems(exc, "unknown argument")
        raise ConfigError(f"strategy {name}: " + "; ".join(problems)) from None


def sum_only(name: str) -> bool:
    """Whether the strategy needs only the updates' sum (user strategies: assumed not)."""
    builtin = BUILTINS.get(name)
    return builtin is not None and builtin.sum_only


def build_strategy(name: str, args: Mapping[str, Any], workdir: Path | None = None) -> Aggregator:
    """The aggregator for a run; ``workdir`` holds the updates a robust rule keeps on disk."""
    valid = validate_args(name, args)
    builtin = BUILTINS.get(name)
    if builtin is not None:
        return builtin.build(valid, workdir)
    factory = import_object(name, "strategy", ConfigError)
    if factory is None or not callable(factory):
        module_name, _, attr = name.partition(":")
        raise ConfigError(f"strategy module {module_name!r} has no callable {attr!r}")
    try:
        strategy = factory(**valid)
    except TypeError as exc:
        raise ConfigError(f"strategy {name}: {exc}") from exc
    if not isinstance(strategy, Aggregator):
        raise ConfigError(
            f"strategy factory {name} returned {type(strategy).__name__}, which lacks "
            "begin/fold/finalize/state/restore"
        )
    return strategy


def describe_builtins() -> str:
    """One line per built-in: name, paper, arguments with defaults (for --help and the README)."""
    lines = []
    for name, builtin in BUILTINS.items():
        fields = ", ".join(
            f"{k} (required)" if f.is_required() else f"{k}={f.default}"
            for k, f in builtin.args.model_fields.items()
        )
        lines.append(f"{name} ({builtin.paper}){': ' + fields if fields else ''}")
    return "\n".join(lines)
