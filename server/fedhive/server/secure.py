"""A SecAgg+ training round as the round engine sees it (no grpc).

:func:`open_secure_round` turns the selected nodes and their identity keys into a
:class:`SecureRound`: the neighbour graph, the thread-safe :class:`SecAggRound`, the upload the
coordinator expects (one int32 tensor of ``P + 1`` masked words) and the parameters every node
needs, as task config. The coordinator then

- answers ``SecAggStep`` calls through :meth:`SecureRound.step` (each call waits at most
  ``wait_s`` and may answer :class:`Pending`; repeating a call is harmless),
- folds each masked upload, once its whole stream was staged and verified, with :meth:`fold`,
- reports gone or refused nodes with :meth:`drop`,
- and closes the round with :meth:`finalize`: unmask, dequantize, one array per tensor spec.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhive.common.api.hooks import Block, contiguous, run
from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError, InvalidUpdateError, SecAggError, StaleRoundError
from fedhive.common.privacy.distributed import DistributedPlan, plan
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import (
    Adverts,
    AwaitUnmask,
    Done,
    Pending,
    SecAggReply,
    SecAggRequest,
    ShareKeys,
    UnmaskReply,
)
from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.secagg.stages import DequantizeStage, masked_spec, masked_words
from fedhive.common.wire.tensors import DTYPES, TensorSpec, from_float
from fedhive.server.privacy.distributed import finalize_distributed
from fedhive.server.secagg_round import SecAggRound
from fedhive.server.store import RunStore

MAX_STEP_WAIT_S = 30.0
UNMASK_WORKERS = max(1, min(4, os.cpu_count() or 1))  # the nodes wait for the unmask: use cores


def round_id(number: int, attempt: int) -> int:
    """The SecAgg round id (bound into every signature): one per attempt of a round."""
    return (number << 16) | attempt


@dataclass
class SecureRound:
    rnd: SecAggRound
    quant: QuantConfig
    specs: list[TensorSpec]
    identities: dict[str, bytes]
    task_config: dict[str, Any]
    certificates: dict[str, bytes] = field(default_factory=dict)  # identity certs (mTLS runs)
    examples: int = 0  # the unmasked summed example count, once finalized
    dp: DistributedPlan | None = None  # distributed DP: the round's calibration
    base: Path | None = None  # distributed DP: the model the nodes' deltas start from
    alive: int = 0  # nodes alive at selection (the accountant's sampling rate)
    history: list[Mapping[str, Any]] = field(default_factory=list)  # the run's earlier records
    delta: float = 0.0
    privacy: dict[str, Any] | None = None  # the round record's ``privacy``, once finalized

    @property
    def id(self) -> int:
        return self.rnd.round

    @property
    def upload_specs(self) -> list[TensorSpec]:
        return [masked_spec(sum(s.numel for s in self.specs))]

    # ------------------------------------------------------------------ node-facing
    def step(self, node: str, request: SecAggRequest) -> SecAggReply:
        if request.round != self.id:
            raise StaleRoundError(
                f"secagg step from {node} for secure round {request.round}, but {self.id} is open"
            )
        wait = min(max(request.wait_s, 0.0), MAX_STEP_WAIT_S)
        body = request.body
        if isinstance(body, KeyAdvert):
            adverts = self.rnd.advertise(node, body, wait)
            if isinstance(adverts, Pending):
                return SecAggReply(self.id, adverts)
            ids = {a.node: self.identities[a.node] for a in adverts}
            certs = {
                a.node: self.certificates[a.node] for a in adverts if a.node in self.certificates
            }
            return SecAggReply(self.id, Adverts(tuple(adverts), ids, certs))
        if isinstance(body, ShareKeys):
            if any(s.sender != node for s in body.shares):
                raise InvalidUpdateError(f"secagg shares from {node} name another sender")
            shares = self.rnd.share_keys(node, list(body.shares), wait)
            if isinstance(shares, Pending):
                return SecAggReply(self.id, shares)
            return SecAggReply(self.id, ShareKeys(tuple(shares)))
        if isinstance(body, AwaitUnmask):
            return SecAggReply(self.id, self.rnd.await_unmask(node, wait))
        if isinstance(body, UnmaskReply):
            self.rnd.unmask(node, body)
            return SecAggReply(self.id, Done())
        raise InvalidUpdateError(f"secagg step from {node}: unknown body")  # pragma: no cover

    def fold(self, node: str, pieces: Iterable[memoryview | bytes]) -> None:
        """Fold a node's staged, verified masked upload (raw little-endian words)."""
        self.rnd.fold_masked(node, word_blocks(pieces))

    def drop(self, node: str) -> None:
        self.rnd.drop(node)

    # ------------------------------------------------------------------ round engine
    def finalize(self) -> tuple[list[np.ndarray], int]:
        """The new global model (flat arrays, one per spec) and the summed example count.

        Raises :class:`~fedhive.common.errors.SecAggAbortedError` if the round was abandoned.
        """
        if self.dp is not None:
            if self.base is None:  # pragma: no cover - open_secure_round sets it
                raise ValueError("distributed DP needs the model the deltas start from")
            out, survivors, privacy = finalize_distributed(
                self.dp,
                self.specs,
                self.rnd.result(UNMASK_WORKERS),
                len(self.rnd.machine.survivors),
                self.base,
                self.alive,
                self.history,
                self.delta,
            )
            self.privacy = {"distributed": privacy}
            return out, survivors
        elements = sum(s.numel for s in self.specs)
        dequantize = DequantizeStage(self.quant)
        # each dequantized block goes straight into the tensors' own dtype (no model-sized
        # float64 copy of the mean)
        out = [np.empty(s.numel, dtype=DTYPES[s.dtype].storage) for s in self.specs]
        bounds = np.cumsum([0] + [s.numel for s in self.specs]).tolist()
        blocks = self.rnd.result(UNMASK_WORKERS)
        for b in contiguous(run([dequantize], blocks), elements):
            for i, spec in enumerate(self.specs):
                lo, hi = max(b.start, bounds[i]), min(b.stop, bounds[i + 1])
                if lo < hi:
                    part = b.values[lo - b.start : hi - b.start]
                    out[i][lo - bounds[i] : hi - bounds[i]] = from_float(part, spec.dtype)
        return out, dequantize.total_weight


def finalize_secure(secure: SecureRound, reason: str) -> tuple[list[np.ndarray], str]:
    """The new global model, or no model and why the round cannot be committed."""
    if not secure.rnd.finished:
        why = f"secure aggregation stopped at its {secure.rnd.step!r} step"
        why += f" ({reason})" if reason else ""
        secure.rnd.abandon(why)
        return [], why
    try:
        arrays, secure.examples = secure.finalize()
    except (SecAggError, ValueError) as exc:
        return [], f"secure aggregation abandoned: {secure.rnd.error or exc}"
    return arrays, ""


@dataclass(frozen=True)
class DPInputs:
    """What a distributed DP round needs from the run: the nodes alive at selection (the
    sampling rate), the model the deltas start from, the stored records (the accountant)."""

    alive: int
    base: Path
    history: list[Mapping[str, Any]]


def dp_inputs(config: ServerConfig, store: RunStore, committed: int, alive: int) -> DPInputs | None:
    """The round's :class:`DPInputs` under ``[dp.distributed]`` (None otherwise); the records are
    read from the store, so a resumed run continues the same accountant."""
    if config.dp is None or config.dp.distributed is None:
        return None
    return DPInputs(alive, store.model_path(committed), list(store.events()))


def open_secure_round(
    config: ServerConfig,
    specs: Sequence[TensorSpec],
    number: int,
    attempt: int,
    identities: Mapping[str, bytes],
    certificates: Mapping[str, bytes] | None = None,
    *,
    masked_deadline: float | None = None,
    dp: DPInputs | None = None,
) -> SecureRound:
    """Plan one secure round over ``identities`` (the selected nodes and their Ed25519 keys);
    its masked step closes at ``masked_deadline`` (``time.monotonic``; the round's deadline).

    Raises :class:`ConfigError` when the round cannot run safely: fewer than two nodes, a graph
    or threshold that does not fit, or a configuration whose unmasked sum could overflow.
    With ``[dp.distributed]`` the nodes send noised deltas from the current model (``dp``, from
    :func:`dp_inputs`, which also feeds the accountant).
    """
    elements = sum(s.numel for s in specs)
    ddp = config.dp.distributed if config.dp is not None else None
    if ddp is not None and dp is None:
        raise ConfigError("distributed DP needs the round's model and records (dp_inputs)")
    calibration = plan(ddp, len(identities), elements) if ddp is not None else None
    quant = config.secagg_quantization() if calibration is None else calibration.quant
    quant.check(len(identities))
    digest = hashlib.sha256(f"{config.seed}:{number}:{attempt}".encode()).digest()
    seed = int.from_bytes(digest[:7], "big")
    graph = Graph.build(
        sorted(identities),
        seed=seed,
        degree=config.secagg_degree,
        threshold=config.secagg_threshold,
    )
    try:
        directory = {u: Ed25519PublicKey.from_public_bytes(k) for u, k in identities.items()}
    except ValueError as exc:
        raise ConfigError(f"a selected node's identity key is not an Ed25519 key: {exc}") from exc
    rid = round_id(number, attempt)
    rnd = SecAggRound(
        graph,
        rid,
        masked_words(elements),
        directory,
        step_timeout_s=config.secagg_step_timeout_s,
        masked_deadline=masked_deadline,
    )
    task_config = {
        "secagg": "secagg+",
        "secagg_round": rid,
        "secagg_nodes": json.dumps(list(graph.nodes)),
        "secagg_seed": seed,
        "secagg_degree": graph.degree,
        "secagg_threshold": graph.threshold,
        "secagg_clip": quant.clip,
        "secagg_bits": quant.bits,
        "secagg_max_weight": quant.max_weight,
        **(calibration.task_config() if calibration is not None else {}),
    }
    return SecureRound(
        rnd,
        quant,
        list(specs),
        dict(identities),
        task_config,
        dict(certificates or {}),
        dp=calibration,
        base=dp.base if dp is not None else None,
        alive=dp.alive if dp is not None else 0,
        history=dp.history if dp is not None else [],
        delta=config.dp.delta if config.dp is not None else 0.0,
    )


def word_blocks(pieces: Iterable[memoryview | bytes]) -> Iterator[Block]:
    """Raw little-endian bytes, cut anywhere, as consecutive uint32 blocks."""
    pos, carry = 0, b""
    for piece in pieces:
        data = carry + bytes(piece) if carry else piece
        usable = len(data) - len(data) % 4
        if usable:
            words = np.frombuffer(data[:usable], dtype="<u4").astype(np.uint32)
            yield Block(pos, words)
            pos += words.size
        carry = bytes(data[usable:])
    if carry:
        raise InvalidUpdateError(f"masked upload ends with {len(carry)} stray byte(s)")
