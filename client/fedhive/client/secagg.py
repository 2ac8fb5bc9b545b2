"""The node's side of a SecAgg+ round over any channel to the coordinator.

:func:`secure_push` runs the four steps: advertise keys, deal shares, stream the clipped,
weighted, quantized and masked update, reveal shares for the survivors. The channel is a small
Protocol, so the same code runs over gRPC and, in tests, against the coordinator's
:class:`~fedhive.server.secagg_round.SecAggRound` in one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedhive.client.transport import Transport
from fedhive.common.errors import (
    ConfigError,
    InvalidUpdateError,
    SecAggAbortedError,
    SecAggAuthError,
)
from fedhive.common.hooks import Block, Stage, blocks_of, run
from fedhive.common.messages import NodeAuth
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KEY_BYTES, KeyAdvert
from fedhive.common.secagg.messages import (
    Adverts,
    AwaitUnmask,
    Pending,
    SealedShares,
    SecAggRequest,
    ShareKeys,
    UnmaskReply,
    UnmaskRequest,
)
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.secagg.stages import ClipStage, MaskStage, QuantizeStage


class SecAggChannel(Protocol):
    """Each call returns when the coordinator closed the step (long-poll)."""

    def advertise(self, advert: KeyAdvert) -> list[KeyAdvert]: ...
    def share_keys(self, sealed: list[SealedShares]) -> list[SealedShares]: ...
    def push_masked(self, blocks: Iterable[Block]) -> None: ...
    def await_unmask(self) -> UnmaskRequest: ...
    def unmask(self, reply: UnmaskReply) -> None: ...


def secure_push(
    channel: SecAggChannel,
    machine: NodeSecAgg,
    values: Iterable[Block],
    weight: int,
    cfg: QuantConfig,
    rng: np.random.Generator,
) -> None:
    """One node's whole SecAgg+ round; raises SecAggError (and stops) on any failure."""
    adverts = channel.advertise(machine.advertise())
    routed = channel.share_keys(machine.share_keys(adverts))
    machine.receive_shares(routed)
    stages: list[Stage] = [ClipStage(cfg.clip), QuantizeStage(cfg, weight, rng), MaskStage(machine)]
    channel.push_masked(run(stages, values))
    request = channel.await_unmask()
    channel.unmask(machine.unmask(request))


# ----------------------------------------------------------------------------- over a Transport


def load_identity(path: Path | None) -> Ed25519PrivateKey:
    """The node's long-term Ed25519 identity: from ``path`` (PEM, or 32 raw private bytes), or
    a fresh key for this process when no path is configured."""
    if path is None:
        return Ed25519PrivateKey.generate()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the identity key file {path}: {exc}") from exc
    try:
        if len(data) == KEY_BYTES:
            return Ed25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity key file {path} is not an Ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key file {path} holds a {type(key).__name__}, not Ed25519")
    return key


@dataclass(frozen=True)
class SecureTask:
    """The SecAgg+ parameters a secure round's task config carries."""

    round: int
    graph: Graph
    quant: QuantConfig

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecureTask | None:
        if config.get("secagg") != "secagg+":
            return None
        try:
            nodes = json.loads(str(config["secagg_nodes"]))
            graph = Graph.build(
                [str(u) for u in nodes],
                seed=int(config["secagg_seed"]),
                degree=int(config["secagg_degree"]),
                threshold=int(config["secagg_threshold"]),
            )
            quant = QuantConfig(
                float(config["secagg_clip"]),
                int(config["secagg_bits"]),
                int(config["secagg_max_weight"]),
            )
            return cls(int(config["secagg_round"]), graph, quant)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidUpdateError(
                f"secure round parameters in the task config: {exc!r}"
            ) from exc


class TransportChannel:
    """A :class:`SecAggChannel` over the node's transport: ``SecAggStep`` calls, repeated while
    the coordinator answers ``Pending``, and the masked upload through ``PushUpdate``.

    Peers' identity keys arrive with their adverts and fill ``directory``; the node's own key,
    as relayed by the coordinator, must be the one this node holds.
    """

    def __init__(
        self,
        transport: Transport,
        auth: NodeAuth,
        round_: int,
        own_key: bytes,
        upload: Callable[[Iterator[Block]], int],
        words: int,
        *,
        wait_s: float,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.transport = transport
        self.auth = auth
        self.round = round_
        self.own_key = own_key
        self.upload = upload
        self.words = words
        self.wait_s = wait_s
        self.stopped = stopped
        self.directory: dict[str, Ed25519PublicKey] = {}
        self.sent = 0
        self.waited_s = 0.0  # in SecAggStep calls (the other nodes' pace and the barriers)
        self.upload_s = 0.0  # quantize, mask and PushUpdate

    def _call(self, body: KeyAdvert | ShareKeys | AwaitUnmask | UnmaskReply) -> Any:
        while True:
            if self.stopped():
                raise SecAggAbortedError("node stopping", node=self.auth.node_id)
            started = time.perf_counter()
            reply = self.transport.secagg_step(
                SecAggRequest(self.auth, self.round, self.wait_s, body)
            )
            self.waited_s += time.perf_counter() - started
            if reply.round != self.round:
                raise SecAggAbortedError(
                    f"secagg reply for round {reply.round}, expected {self.round}"
                )
            if not isinstance(reply.body, Pending):
                return reply.body

    def advertise(self, advert: KeyAdvert) -> list[KeyAdvert]:
        body = self._call(advert)
        if not isinstance(body, Adverts):
            raise SecAggAbortedError("the coordinator answered a key advert with something else")
        for a in body.adverts:
            key = body.identities.get(a.node)
            if key is None:
                raise SecAggAuthError(f"no identity key relayed for node {a.node!r}", node=a.node)
            if a.node == self.auth.node_id and key != self.own_key:
                raise SecAggAuthError("the coordinator relayed another identity key for this node")
            self.directory[a.node] = Ed25519PublicKey.from_public_bytes(key)
        return list(body.adverts)

    def share_keys(self, sealed: list[SealedShares]) -> list[SealedShares]:
        body = self._call(ShareKeys(tuple(sealed)))
        if not isinstance(body, ShareKeys):
            raise SecAggAbortedError("the coordinator answered shares with something else")
        return list(body.shares)

    def push_masked(self, blocks: Iterable[Block]) -> None:
        started = time.perf_counter()
        self.sent = self.upload(contiguous(blocks, self.words))
        self.upload_s += time.perf_counter() - started

    def await_unmask(self) -> UnmaskRequest:
        body = self._call(AwaitUnmask())
        if not isinstance(body, UnmaskRequest):
            raise SecAggAbortedError("the coordinator answered await-unmask with something else")
        return body

    def unmask(self, reply: UnmaskReply) -> None:
        self._call(reply)


def contiguous(blocks: Iterable[Block], size: int) -> Iterator[Block]:
    """Pass ``blocks`` through, checking that they tile ``[0, size)`` in order (the upload is
    streamed block by block as the masks are applied, never assembled in one array)."""
    expected = 0
    for b in blocks:
        if b.start != expected or b.stop > size:
            raise ValueError(f"block [{b.start}, {b.stop}) out of order (expected {expected})")
        expected = b.stop
        yield b
    if expected != size:
        raise ValueError(f"stream ended at {expected} of {size} elements")


def model_blocks(arrays: Iterable[np.ndarray], block: int = 1 << 20) -> Iterator[Block]:
    """Flat float arrays (the model's tensors in spec order) as one stream of blocks."""
    start = 0
    for values in arrays:
        yield from blocks_of(values, block, start=start)
        start += int(values.size)
