"""A round's record: what the coordinator wrote about one training round or the final evaluation.

:class:`RoundRecord` is a typed, frozen dataclass that reads as a mapping of its present fields,
so the run store writes it to ``events.jsonl`` (as :meth:`RoundRecord.to_event`: a field that is
``None`` is left out, exactly as the line always read), the progress display prints it, and
``fedhive report`` reads it back (:meth:`RoundRecord.from_event`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ROUND = "round"  # a training round's record
EVALUATE = "evaluate"  # the final federated evaluation's record
KINDS = (ROUND, EVALUATE)


@dataclass(frozen=True, eq=False)
class RoundRecord(Mapping[str, Any]):
    event: str  # ROUND or EVALUATE
    round: int
    attempt: int
    selected: list[str]
    refused: dict[str, str]
    dropped: list[str]
    duration_s: float
    bytes_in: int
    bytes_out: int
    time: float
    reported: list[str]
    examples: int
    committed: bool
    aggregate_s: float | None = None  # time spent finalizing the aggregate
    reason: str | None = None  # why the round was not committed
    model_round: int | None = None  # EVALUATE: the model it evaluated
    train: dict[str, Any] | None = None  # the round's training metrics
    evaluate: dict[str, Any] | None = None  # federated evaluation (and its model_round)
    nodes: dict[str, dict[str, Any]] | None = None  # per node: examples, metrics, weight
    server_evaluate: dict[str, Any] | None = None  # the coordinator's own evaluation
    note: str | None = None  # why a committed round closed early (e.g. its deadline)
    # differential privacy, keyed by level ("sgd": {"delta", "max", "nodes": {id: epsilon}} ...)
    privacy: dict[str, Any] | None = None

    def to_event(self) -> dict[str, Any]:
        """The record as its events.jsonl line holds it (absent fields left out)."""
        return dict(self.items())

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RoundRecord:
        """A record from an events.jsonl line (keys it does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in event.items() if k in names})

    # -- Mapping: the present fields
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        value = getattr(self, key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_FIELDS = tuple(f.name for f in dataclasses.fields(RoundRecord))
