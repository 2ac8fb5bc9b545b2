"""The node's side of a SecAgg+ round over any channel to the coordinator.

A round has two parts. :func:`exchange_keys` advertises keys, deals and receives shares, then
:func:`make_pad` computes the node's whole mask (:meth:`NodeSecAgg.pad`); none of it needs the
update, so the node runs them in a :class:`KeyExchange` thread: the exchange from the moment the
task arrives, the mask once the model is downloaded (its CPU work would slow the download), both
while the node trains. :func:`push_update` then clips, weights and quantizes the update into the
mask, streams it and reveals shares for the survivors. :func:`secure_push` is all in a row.
The channel is a small Protocol, so the same code runs over gRPC and, in tests, against the
coordinator's :class:`~fedhive.server.secagg_round.SecAggRound` in one process.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedhive.client.privacy.noise import NoiseDraw
from fedhive.client.transport import Transport
from fedhive.common.api.hooks import Block, Stage, blocks_of, contiguous, run
from fedhive.common.crypto.pki import load_cert, read_bytes, verify_identity_cert
from fedhive.common.errors import (
    ConfigError,
    InvalidUpdateError,
    PkiError,
    SecAggAbortedError,
    SecAggAuthError,
)
from fedhive.common.privacy.distributed import DistributedDPSettings, share_refusal
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
from fedhive.common.secagg.stages import QuantizeStage
from fedhive.common.wire.messages import NodeAuth

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


# ----------------------------------------------------------------------------- over a Transport


@dataclass(frozen=True)
class NodeIdentity:
    """This node's secure-aggregation identity; under mutual TLS with the CA's certificate for
    it (``cert``, DER) and the CA that peers' certificates must come from (``ca``)."""

    key: Ed25519PrivateKey
    cert: bytes = b""
    ca: x509.Certificate | None = None

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes_raw()


def load_node_identity(
    key_path: Path | None, cert_path: Path | None, ca_path: Path | None, node_id: str
) -> NodeIdentity:
    """The identity a node runs with: with ``cert_path`` (mutual TLS), the certificate must be
    the CA's, for ``node_id`` (the TLS certificate's name), and certify this very key."""
    key = load_identity(key_path)
    if cert_path is None:
        return NodeIdentity(key)
    if ca_path is None:
        raise ConfigError("an identity certificate needs the CA certificate (tls_ca) to check it")
    try:
        pem = read_bytes(cert_path, "identity certificate")
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        ca = load_cert(ca_path, "CA certificate")
        certified = verify_identity_cert(der, ca, node_id)
    except ValueError as exc:
        raise ConfigError(f"identity certificate {cert_path} is not a PEM certificate") from exc
    except PkiError as exc:
        raise ConfigError(f"identity certificate {cert_path}: {exc}") from exc
    if certified.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise ConfigError(f"identity certificate {cert_path} certifies another key than {key_path}")
    return NodeIdentity(key, der, ca)


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


class TransportChannel:
    """A :class:`SecAggChannel` over the node's transport: ``SecAggStep`` calls, repeated while
    the coordinator answers ``Pending``, and the masked upload through ``PushUpdate`` (``upload``,
    which may be set after the key exchange started).

    Peers' identity keys arrive with their adverts and fill ``directory``; the node's own key,
    as relayed by the coordinator, must be the one this node holds.
    """

    def __init__(
        self,
        transport: Transport,
        auth: NodeAuth,
        round_: int,
        identity: NodeIdentity,
        upload: Callable[[Iterator[Block]], int] | None,
        words: int,
        *,
        wait_s: float,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.transport = transport
        self.auth = auth
        self.round = round_
        self.identity = identity
        self.upload = upload
        self.words = words
        self.wait_s = wait_s
        self.stopped = stopped
        self.directory: dict[str, Ed25519PublicKey] = {}
        self.sent = 0
        self.waited_s = 0.0  # in SecAggStep calls (the other nodes' pace and the barriers)
        self.upload_s = 0.0  # PushUpdate of the masked blocks

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
            self.directory[a.node] = self._peer_key(a.node, body)
        return list(body.adverts)

    def _peer_key(self, node: str, body: Adverts) -> Ed25519PublicKey:
        """A peer's identity key: under mutual TLS only as certified by this node's own copy of
        the consortium CA (the coordinator cannot substitute one); otherwise as relayed."""
        own = node == self.auth.node_id
        if self.identity.ca is not None:
            cert = body.certificates.get(node)
            if not cert:
                raise SecAggAuthError(
                    f"no identity certificate relayed for node {node!r}", node=node
                )
            if own and not hmac.compare_digest(cert, self.identity.cert):
                raise SecAggAuthError("the coordinator relayed another identity for this node")
            try:
                return verify_identity_cert(cert, self.identity.ca, node)
            except PkiError as exc:
                raise SecAggAuthError(f"node {node!r}: {exc}", node=node) from exc
        key = body.identities.get(node)
        if key is None:
            raise SecAggAuthError(f"no identity key relayed for node {node!r}", node=node)
        if own and not hmac.compare_digest(key, self.identity.public):
            raise SecAggAuthError("the coordinator relayed another identity key for this node")
        return Ed25519PublicKey.from_public_bytes(key)

    def share_keys(self, sealed: list[SealedShares]) -> list[SealedShares]:
        body = self._call(ShareKeys(tuple(sealed)))
        if not isinstance(body, ShareKeys):
            raise SecAggAbortedError("the coordinator answered shares with something else")
        return list(body.shares)

    def push_masked(self, blocks: Iterable[Block]) -> None:
        if self.upload is None:  # set once the update's metadata (the trailer) exists
            raise SecAggAbortedError("no upload set for the masked update")
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


def model_blocks(arrays: Iterable[np.ndarray], block: int = 1 << 20) -> Iterator[Block]:
    """Flat float arrays (the model's tensors in spec order) as one stream of blocks."""
    start = 0
    for values in arrays:
        yield from blocks_of(values, block, start=start)
        start += int(values.size)
