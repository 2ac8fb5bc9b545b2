"""A round's state and the admission of its uploads. Imports no grpc.

:class:`RoundState` is what the round engine knows of the open round: whom it selected, who
pulled, reported, was refused or dropped, which uploads are in flight. Its methods are the
bookkeeping of one upload's life (admit, start folding, fold failed, reported, refused); the
engine calls them under its lock.

:class:`UpdateSession` is one update stream: each chunk is checked on arrival and staged in a
spool; the trailer commits the update (through the engine's ``commit`` callback) or nothing does.
It holds no reference to the engine: ``commit`` and ``refuse`` are callbacks.

:func:`check_header` checks an update's header against the node's join declaration and the
tensors the round expects, before a byte of payload is staged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedhive.common.config import ServerConfig
from fedhive.common.errors import (
    DuplicateUpdateError,
    InvalidUpdateError,
    LimitExceededError,
    NotSelectedError,
    StaleRoundError,
)
from fedhive.common.wire.chunks import Chunk, StreamChecker
from fedhive.common.wire.messages import TaskKind, UpdateHeader, UpdateTrailer
from fedhive.common.wire.tensors import TensorSpec, payload_bytes
from fedhive.server.broadcast import Broadcast
from fedhive.server.limits import check_examples
from fedhive.server.privacy.sgd import check_update as check_sgd_update
from fedhive.server.spool import Spool, SpoolBudget

if TYPE_CHECKING:
    from fedhive.server.aggregation_path import AggregationPath


@dataclass
class Contribution:
    node_id: str
    num_examples: int
    metrics: Mapping[str, float]
    eval_metrics: Mapping[str, float]
    eval_examples: int
    bytes_in: int
    upload_s: float
    dp_epsilon: float | None = None  # DP-SGD: the node's epsilon so far (its bounded claim)


@dataclass
class RoundState:
    number: int
    attempt: int
    kind: TaskKind
    selected: set[str]
    deadline: float
    opened_at: float
    broadcast: Broadcast
    path: AggregationPath  # how its updates are aggregated (plain, SecAgg+, none)
    pulled: set[str] = field(default_factory=set)
    reported: dict[str, Contribution] = field(default_factory=dict)
    evaluations: dict[str, tuple[int, Mapping[str, float]]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    uploads: dict[str, UpdateSession] = field(default_factory=dict)  # in flight, by node id
    folding: int = 0
    closed: bool = False
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def upload_specs(self) -> list[TensorSpec] | None:
        return self.path.upload_specs

    def pending(self) -> set[str]:
        return (
            self.selected
            - set(self.reported)
            - set(self.evaluations)
            - set(self.refused)
            - self.dropped
        )

    # -- one upload's life, under the engine's lock

    def admit(self, nid: str) -> None:
        """Refuse a new upload from ``nid`` unless this open round still expects it."""
        if self.closed:
            raise StaleRoundError(
                f"update from {nid} for round {self.number} is late: the round is closed"
            )
        if nid in self.reported:
            raise DuplicateUpdateError(
                f"node {nid} already sent its update for round {self.number}"
            )
        if nid in self.uploads:
            raise DuplicateUpdateError(
                f"node {nid} is already uploading an update for round {self.number}"
            )
        if nid not in self.selected:
            raise NotSelectedError(f"node {nid} is not selected for round {self.number}")
        if nid in self.refused:
            raise NotSelectedError(
                f"node {nid} was dropped from round {self.number} after a refused update "
                f"({self.refused[nid]}); it may take part again next round"
            )

    def start_fold(self, nid: str, current: bool) -> None:
        """``nid``'s stream is complete: it may fold now unless the round closed (or is no longer
        the ``current`` one) meanwhile."""
        self.uploads.pop(nid, None)
        if self.closed or not current:
            raise StaleRoundError(
                f"update from {nid} for round {self.number} is late: the round closed before "
                "its upload completed"
            )
        self.folding += 1

    def fold_failed(self, nid: str, reason: str) -> None:
        self.folding -= 1
        self.refused[nid] = reason

    def folded(self, contribution: Contribution) -> tuple[int, int, int]:
        """Record a folded update; (updates received, nodes selected, bytes in)."""
        self.folding -= 1
        self.reported[contribution.node_id] = contribution
        self.bytes_in += contribution.bytes_in
        return len(self.reported), len(self.selected), self.bytes_in

    def drop_upload(self, session: UpdateSession, reason: str) -> None:
        """``session`` broke off: it is no longer in flight, and its node is refused this round
        (unless it already reported)."""
        nid = session.node_id
        if self.uploads.get(nid) is session:
            del self.uploads[nid]
        if nid not in self.reported:
            self.refused[nid] = reason


def check_open(st: RoundState | None, nid: str, round_: int) -> RoundState:
    """The open training round an update for ``round_`` is for (StaleRoundError otherwise)."""
    if st is None or st.kind != TaskKind.TRAIN or round_ != st.number:
        current = (
            "no training round" if st is None or st.kind != TaskKind.TRAIN else f"round {st.number}"
        )
        raise StaleRoundError(f"update from {nid} is for round {round_}, but {current} is open")
    return st


def check_header(
    header: UpdateHeader,
    nid: str,
    declared: int,
    want: list[TensorSpec],
    limit: int | None,
) -> None:
    """Refuse an update header that does not fit: its example count against the ``declared``
    one, its tensors against ``want``, their size against ``limit`` (max_update_bytes)."""
    what = f"update from {nid}"
    if header.num_examples <= 0:
        raise InvalidUpdateError(f"{what}: example count must be > 0, got {header.num_examples}")
    if header.num_examples > declared:
        raise InvalidUpdateError(
            f"{what}: claims {header.num_examples} examples, more than the {declared} it "
            "declared at join"
        )
    got = header.tensors
    if len(got) != len(want):
        raise InvalidUpdateError(f"{what}: {len(got)} tensors, the global model has {len(want)}")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.name != w.name:
            raise InvalidUpdateError(f"{what}: tensor {i} is {g.name!r}, expected {w.name!r}")
        if g.dtype != w.dtype:
            raise InvalidUpdateError(
                f"{what}: tensor {w.name!r} has dtype {g.dtype}, expected {w.dtype}"
            )
        if g.shape != w.shape:
            raise InvalidUpdateError(
                f"{what}: tensor {w.name!r} has shape {list(g.shape)}, expected {list(w.shape)}"
            )
    size = payload_bytes(want)
    if limit is not None and size > limit:
        raise LimitExceededError(f"{what}: {size} bytes exceeds the limit {limit}")


Commit = Callable[["UpdateSession", UpdateTrailer], Contribution]
Refuse = Callable[["UpdateSession", str], None]


class UpdateSession:
    """One update stream: chunks are checked and staged; the trailer commits or nothing does."""

    def __init__(
        self,
        node_id: str,
        state: RoundState,
        header: UpdateHeader,
        specs: Sequence[TensorSpec],
        config: ServerConfig,
        spool_budget: SpoolBudget,
        *,
        commit: Commit,
        refuse: Refuse,
        cancel: Callable[[], None] | None = None,
    ):
        self._commit = commit
        self._refuse = refuse
        self._max_eval_examples = config.max_node_examples
        self._dp = config.dp
        # ends the stream from the coordinator's side (the transport's cancel): an upload still
        # open when its round closes is cut off, so its handler and staging buffer are freed
        self.cancel = cancel
        self.node_id = node_id
        self.state = state
        self.header = header
        self.num_examples = header.num_examples
        self.started = time.monotonic()
        self.checker = StreamChecker(
            specs,
            max_chunk_size=config.chunk_size,
            max_payload_bytes=config.max_update_bytes,
            what=f"update from {node_id} for round {state.number}",
        )
        self._offsets = np.cumsum([0] + [s.nbytes for s in specs]).tolist()
        self.spool = Spool(
            self.checker.total, spool_budget, config.spool_dir, wait_s=config.spool_wait_s
        )
        self.done = False

    # -- StagedUpdate
    @property
    def peaks(self) -> list[float]:
        """The largest |value| per tensor (bounds what this update adds to a sum)."""
        return self.checker.peaks

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        begin, end = self._offsets[tensor], self._offsets[tensor + 1]
        return self.spool.pieces(begin, end - begin)

    def add_chunk(self, chunk: Chunk) -> None:
        self.checker.check(chunk)
        self.spool.write(chunk.data)
        self.checker.advance(chunk)

    def finish(self, trailer: UpdateTrailer) -> Contribution:
        self.checker.finish(trailer.digest)
        check_examples(trailer.eval_examples, self._max_eval_examples, "eval_examples")
        check_sgd_update(self._dp, trailer.dp_epsilon, self.node_id, self.state.number)
        try:
            return self._commit(self, trailer)
        finally:
            self._close()

    def abort(self, reason: str) -> None:
        if self.done:
            return
        self._close()
        self._refuse(self, reason)

    def _close(self) -> None:
        self.done = True
        self.spool.close()

    def contribution(self, trailer: UpdateTrailer) -> Contribution:
        """What this update brought, once folded."""
        return Contribution(
            node_id=self.node_id,
            num_examples=self.num_examples,
            metrics=dict(trailer.metrics),
            eval_metrics=dict(trailer.eval_metrics),
            eval_examples=trailer.eval_examples,
            bytes_in=self.checker.received,
            upload_s=time.monotonic() - self.started,
            dp_epsilon=trailer.dp_epsilon,
        )
