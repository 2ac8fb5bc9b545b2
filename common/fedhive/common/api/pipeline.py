"""The node's update pipeline: stages (:mod:`fedhive.common.api.hooks`) chosen by configuration.

A node's update travels through, in this order::

    delta -> [user float stages] -> [dp clip] -> quantize -> [user word stages] -> [dp noise]
          -> mask -> upload

``delta`` is the trained model less the model the node downloaded, as float blocks. The
built-in stages are chosen by the run: ``[dp.distributed]`` adds the L2 clip of the delta and the
discrete Gaussian noise (:mod:`fedhive.common.privacy.distributed`), ``secure_aggregation =
"secagg+"`` the quantization and the mask (:mod:`fedhive.common.secagg.stages`). Without
distributed DP, the downloaded model is added back after the float stages (the coordinator
averages models, as ever); without SecAgg+ the result is uploaded as floats.

User stages are named by import path in the node's configuration, ``[pipeline] node =
["package.module:Factory", ...]``: each names a class or a function that takes no argument and
returns a fresh stage for one round (``name``, ``transform(blocks)``, and ``domain``: ``"float"``
(the default) for stages on the delta's values, ``"words"`` for stages on the quantized uint32
words of a SecAgg+ round). A stage refuses an update by raising
:class:`~fedhive.common.errors.InvalidUpdateError`: the node then declines the round, naming the
reason. The node, not the coordinator, chooses the code it runs: a coordinator cannot make nodes
import anything.

Where the math does not allow a stage, it is refused with the reason: a float stage after a word
stage (quantization turned the values into integers mod 2^32, which SecAgg+ sums), and a word
stage in a round without SecAgg+ (there are no words). User float stages come before the DP
clip, word stages before the noise: a stage after either could undo the privacy guarantee.

The coordinator has user stages of its own (``[pipeline] update`` and ``aggregate`` in its run
config, :class:`CoordinatorPipelineSettings`; run by :mod:`fedhive.server.pipeline`): float
stages only, loaded by the same :func:`load_stages`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedhive.common.api.hooks import Block, Stage
from fedhive.common.errors import ConfigError
from fedhive.common.runtime.imports import import_object

FLOAT = "float"
WORDS = "words"
DOMAINS = (FLOAT, WORDS)


class PipelineSettings(BaseModel):
    """``[pipeline]`` of a node's configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: tuple[str, ...] = ()


class CoordinatorPipelineSettings(BaseModel):
    """``[pipeline]`` of the coordinator's run config: user stages by import path.

    ``update``: run on each node's update as it arrives (its delta from the round's global
    model), before the strategy folds it; ``aggregate``: run on the round's result (new model
    less global) before it is committed. Float stages only (:mod:`fedhive.server.pipeline`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    update: tuple[str, ...] = ()
    aggregate: tuple[str, ...] = ()


def domain_of(stage: object) -> str:
    return str(getattr(stage, "domain", FLOAT))


@dataclass(frozen=True)
class UserStage:
    path: str
    factory: Callable[[], Stage]
    domain: str

    def make(self) -> Stage:
        return self.factory()


def load_stages(paths: Sequence[str], *, coordinator: bool = False) -> list[UserStage]:
    """Import and check every user stage (at the node's or the coordinator's start): importable,
    a factory of :class:`~fedhive.common.api.hooks.Stage`, a known domain, no float stage after a
    word stage; on the ``coordinator``, float stages only (it never sees quantized words)."""
    out: list[UserStage] = []
    for path in paths:
        factory = import_object(path, "pipeline stage", ConfigError, form="Stage")
        if factory is None or not callable(factory):
            raise ConfigError(f"pipeline stage {path!r}: no such class or factory")
        try:
            stage = factory()
        except Exception as exc:
            raise ConfigError(f"pipeline stage {path!r} cannot be built: {exc!r}") from exc
        if not isinstance(stage, Stage):
            raise ConfigError(
                f"pipeline stage {path!r} is not a stage: it needs a 'name' and a "
                f"'transform(blocks)' method (fedhive.common.api.hooks.Stage)"
            )
        domain = domain_of(stage)
        if domain not in DOMAINS:
            raise ConfigError(
                f"pipeline stage {path!r}: domain {domain!r} is not one of {list(DOMAINS)}"
            )
        if coordinator and domain != FLOAT:
            raise ConfigError(
                f"pipeline stage {path!r} works on quantized SecAgg+ words (domain {domain!r}), "
                f"but the coordinator's stages see float deltas only: put it on the nodes "
                f"([pipeline] node in their config)"
            )
        if domain == FLOAT and out and out[-1].domain == WORDS:
            raise ConfigError(
                f"pipeline stage {path!r} works on float values but comes after "
                f"{out[-1].path!r}, which works on quantized SecAgg+ words: a float stage "
                f"cannot follow quantization (the words are integers mod 2^32); move it earlier"
            )
        out.append(UserStage(path, factory, domain))
    return out


def split(stages: Sequence[UserStage], *, secure: bool) -> tuple[list[Stage], list[Stage]]:
    """Fresh float and word stages for one round; a word stage needs a SecAgg+ round."""
    words = [s for s in stages if s.domain == WORDS]
    if words and not secure:
        raise ConfigError(
            f"pipeline stage {words[0].path!r} works on SecAgg+ words, but this round does not "
            f"use secure aggregation (the coordinator's secure_aggregation is 'none')"
        )
    return [s.make() for s in stages if s.domain == FLOAT], [s.make() for s in words]


class DeltaStage:
    """Float blocks of the trained values less the downloaded ones (``base``, flat float)."""

    name = "delta"
    domain = FLOAT

    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, np.asarray(b.values, np.float64) - self.base[b.start : b.stop])


class RebaseStage:
    """The downloaded values added back (the coordinator averages models)."""

    name = "rebase"
    domain = FLOAT

    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, np.asarray(b.values, np.float64) + self.base[b.start : b.stop])
