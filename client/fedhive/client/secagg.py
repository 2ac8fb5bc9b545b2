"""The node's side of a SecAgg+ round over any channel to the coordinator.

A round has two parts. :func:`exchange_keys` advertises keys, deals and receives shares, then
:func:`make_pad` computes the node's whole mask (:meth:`NodeSecAgg.pad`); none of it needs the
update, so the node runs them in a :class:`KeyExchange` thread: the exchange from the moment the
task arrives, the mask once the model is downloaded (its CPU work would slow the download), both
while the node trains. :func:`push_update` then clips, weights and quantizes the update into the
mask, streams it and reveals shares for the survivors. :func:`secure_push` is all in a row.
The channel is a small Protocol, so the same code runs over gRPC and, in tests, against the
coordinator's :class:`~fedhive.server.secagg_round.SecAggRound` in one process. The node's
identity is in :mod:`fedhive.client.identity`, the channel over its transport in
:mod:`fedhive.client.secagg_channel` (both re-exported here).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedhive.client.identity import NodeIdentity, load_identity, load_node_identity
from fedhive.client.privacy.noise import NoiseDraw
from fedhive.client.secagg_channel import TransportChannel
from fedhive.common.api.hooks import Block, Stage, blocks_of, run
from fedhive.common.errors import InvalidUpdateError, SecAggAbortedError
from fedhive.common.privacy.distributed import DistributedDPSettings, share_refusal
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import SealedShares, UnmaskReply, UnmaskRequest
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.secagg.stages import QuantizeStage

__all__ = [  # the identity and the transport channel live in their own modules
    "UPLOAD_BLOCK",
    "KeyExchange",
    "NodeIdentity",
    "SecAggChannel",
    "SecureTask",
    "SecureTimes",
    "TransportChannel",
    "exchange_keys",
    "load_identity",
    "load_node_identity",
    "make_pad",
    "model_blocks",
    "push_update",
    "secure_push",
]

UPLOAD_BLOCK = 1 << 20  # words per block of the masked upload


class SecAggChannel(Protocol):
    """Each call returns when the coordinator closed the step (long-poll)."""

    def advertise(self, advert: KeyAdvert) -> list[KeyAdvert]: ...
    def share_keys(self, sealed: list[SealedShares]) -> list[SealedShares]: ...
    def push_masked(self, blocks: Iterable[Block]) -> None: ...
    def await_unmask(self) -> UnmaskRequest: ...
    def unmask(self, reply: UnmaskReply) -> None: ...


@dataclass
class SecureTimes:
    """Seconds of one node's secure round spent on its own work (the waits are the channel's)."""

    keys_s: float = 0.0  # the key exchange, its waits included
    mask_s: float = 0.0  # computing the whole mask
    quantize_s: float = 0.0  # quantizing into the mask (after training)
    noise_s: float = 0.0  # distributed DP: drawing the noise (from the task's arrival on)


def exchange_keys(channel: SecAggChannel, machine: NodeSecAgg, times: SecureTimes) -> None:
    """Steps 1 and 2: advertise keys, deal shares, open the shares dealt to this node."""
    started = time.perf_counter()
    adverts = channel.advertise(machine.advertise())
    routed = channel.share_keys(machine.share_keys(adverts))
    machine.receive_shares(routed)
    times.keys_s = time.perf_counter() - started


def make_pad(machine: NodeSecAgg, times: SecureTimes) -> np.ndarray:
    """The node's whole mask (after :func:`exchange_keys`)."""
    started = time.perf_counter()
    pad = machine.pad()
    times.mask_s = time.perf_counter() - started
    return pad


def push_update(
    channel: SecAggChannel,
    machine: NodeSecAgg,
    pad: np.ndarray,
    values: Iterable[Block],
    weight: int,
    cfg: QuantConfig,
    rng: np.random.Generator,
    times: SecureTimes,
    stages: Sequence[Stage] | None = None,
) -> None:
    """Steps 3 and 4: quantize ``values`` into ``pad`` (consumed), upload, reveal shares.

    ``stages`` (from :func:`secure_stages`) replaces the plain quantization into the pad.

    Quantization clips. Every block is quantized before the upload starts (a NaN stops the
    round for this node before it sent anything): the coordinator stages a few uploads at a
    time and holds the other streams back, so work done inside the upload's stream would queue
    behind the other nodes' uploads. (Quantizing in a thread ahead of the upload measured no
    faster with 10 nodes on 2 cores.)
    """
    started = time.perf_counter()
    pipeline = [QuantizeStage(cfg, weight, rng, pad)] if stages is None else stages
    for _ in run(pipeline, values):  # into the mask
        pass
    times.quantize_s = time.perf_counter() - started
    channel.push_masked(blocks_of(pad, UPLOAD_BLOCK))
    request = channel.await_unmask()
    channel.unmask(machine.unmask(request))


def secure_push(
    channel: SecAggChannel,
    machine: NodeSecAgg,
    values: Iterable[Block],
    weight: int,
    cfg: QuantConfig,
    rng: np.random.Generator,
) -> SecureTimes:
    """One node's whole SecAgg+ round in a row; raises SecAggError (and stops) on any failure."""
    times = SecureTimes()
    exchange_keys(channel, machine, times)
    pad = make_pad(machine, times)
    push_update(channel, machine, pad, values, weight, cfg, rng, times)
    return times


class KeyExchange:
    """:func:`exchange_keys`, then :func:`make_pad` once :meth:`allow_masking` was called (the
    model is downloaded), in a background thread started when a secure task arrives.

    ``make_machine`` builds the round's :class:`NodeSecAgg` in that thread; :meth:`pad` waits for
    the mask and re-raises the thread's error. The machine (the round's keys) lives as long as this
    object: a node that pulls the same round's task again (after a broken download or upload)
    must go on with the keys it advertised, not with fresh ones. :meth:`cancel` makes the
    channel's next call raise (the channel's ``stopped`` should check :attr:`cancelled`).
    """

    def __init__(
        self,
        round_: int,
        channel: SecAggChannel,
        make_machine: Callable[[], NodeSecAgg],
        cancelled: threading.Event | None = None,
        noise_variance: int | None = None,
        words: int = 0,
    ) -> None:
        self.round = round_
        self.channel = channel
        self.times = SecureTimes()
        self.cancelled = cancelled or threading.Event()
        self.machine: NodeSecAgg | None = None
        self._make_machine = make_machine
        # distributed DP: the noise, drawn from the start in a thread of its own (while the node
        # downloads, exchanges keys and trains); the key-exchange thread joins it and adds it
        # to the mask
        self._noise = (
            NoiseDraw(noise_variance, words, self.cancelled) if noise_variance is not None else None
        )
        self._pad: np.ndarray | None = None
        self._error: BaseException | None = None
        self._used = False
        self._may_mask = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedhive-secagg-keys", daemon=True)

    def start(self) -> KeyExchange:
        if self._noise is not None:
            self._noise.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.machine = self._make_machine()
            exchange_keys(self.channel, self.machine, self.times)
            while not self._may_mask.wait(0.5):
                if self.cancelled.is_set():
                    raise SecAggAbortedError("the secure round was given up")
            self._pad = self._noised(make_pad(self.machine, self.times))
        except BaseException as exc:  # handed to the caller of pad()
            self._error = exc
        finally:
            if self._noise is not None:  # this thread owns the noise thread's end
                self._noise.join()

    def _noised(self, pad: np.ndarray) -> np.ndarray:
        if self._noise is None:
            return pad
        pad = self._noise.add_to(pad)
        self.times.noise_s = self._noise.seconds
        return pad

    @property
    def noise_drawn(self) -> bool:
        """Distributed DP: the node's noise is drawn (the mask need not be)."""
        return self._noise is not None and self._noise.drawn

    def allow_masking(self) -> None:
        """The mask may be computed now (the node no longer downloads)."""
        self._may_mask.set()

    @property
    def failed(self) -> bool:
        return not self._thread.is_alive() and self._error is not None

    def cancel(self) -> None:
        self.cancelled.set()

    def pad(self) -> tuple[NodeSecAgg, np.ndarray]:
        """The machine and the whole mask, once the exchange is done; the mask is computed again
        for a repeated push (the first push consumed it)."""
        self._may_mask.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        machine, pad = self.machine, self._pad
        if machine is None:  # pragma: no cover - _run sets a machine or an error
            raise SecAggAbortedError("the key exchange ended without its state")
        if self._used or pad is None:
            return machine, self._noised(machine.pad())
        self._pad, self._used = None, True  # the caller owns it now
        return machine, pad


# ---------------------------------------------------------------------- the task's parameters


@dataclass(frozen=True)
class SecureTask:
    """The SecAgg+ parameters a secure round's task config carries."""

    round: int
    graph: Graph
    quant: QuantConfig
    dp_clip: float | None = None  # distributed DP: the L2 clip of the delta
    dp_variance: int | None = None  # distributed DP: this node's discrete Gaussian variance
    dp_settings: DistributedDPSettings | None = None  # distributed DP: the run's, as stated

    def noise_refusal(self, elements: int, floor: float | None) -> str | None:
        """Why this node must not add its distributed DP share to the round (None: it may): a
        variance below what the task's own settings imply, or below the site's ``floor``."""
        if self.dp_variance is None or self.dp_clip is None:
            return None
        return share_refusal(
            self.dp_variance,
            self.dp_settings,
            clip=self.dp_clip,
            bits=self.quant.bits,
            selected=len(self.graph.nodes),
            threshold=self.graph.threshold,
            elements=elements,
            floor=floor,
        )

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
            dp_clip = dp_variance = dp_settings = None
            if "secagg_dp_variance" in config:
                dp_clip = float(config["secagg_dp_clip"])
                dp_variance = int(str(config["secagg_dp_variance"]))
                if not (dp_clip > 0 and np.isfinite(dp_clip)) or dp_variance < 1:
                    raise ValueError(f"distributed DP clip {dp_clip}, variance {dp_variance}")
                if quant.max_weight != 1:
                    raise ValueError("distributed DP rounds weigh every node 1")
                if "secagg_dp_noise_multiplier" in config:  # the settings it was calibrated from
                    dp_settings = DistributedDPSettings(
                        noise_multiplier=config["secagg_dp_noise_multiplier"],
                        clip=dp_clip,
                        bits=quant.bits,
                        expected_dropout=config.get("secagg_dp_expected_dropout", 0.0),
                    )
            return cls(int(config["secagg_round"]), graph, quant, dp_clip, dp_variance, dp_settings)
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError included
            raise InvalidUpdateError(
                f"secure round parameters in the task config: {exc!r}"
            ) from exc


def model_blocks(arrays: Iterable[np.ndarray], block: int = 1 << 20) -> Iterator[Block]:
    """Flat float arrays (the model's tensors in spec order) as one stream of blocks."""
    start = 0
    for values in arrays:
        yield from blocks_of(values, block, start=start)
        start += int(values.size)
