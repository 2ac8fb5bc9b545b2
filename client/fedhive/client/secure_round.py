"""A node's part in secure rounds: the key exchange started when the task arrives (kept while
the same round's task is pulled again) and the masked push after training."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fedhive.client.identity import NodeIdentity
from fedhive.client.pipeline import secure_stages
from fedhive.client.secagg import KeyExchange, SecureTask, model_blocks, push_update
from fedhive.client.secagg_channel import TransportChannel
from fedhive.client.transport import Transport
from fedhive.client.upload import DEFAULT_CHUNK, Trailer, update_stream
from fedhive.common.api.hooks import Block
from fedhive.common.api.pipeline import UserStage, split
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.stages import COUNT_WORDS, masked_spec, masked_words
from fedhive.common.wire.chunks import Chunk, iter_chunks
from fedhive.common.wire.messages import JoinReply, TaskHeader
from fedhive.common.wire.tensors import TensorSpec, raw_view, tensor_bytes, to_float

log = logging.getLogger("fedhive.client")


class SecureRounds:
    """Holds the secure round under way (its :class:`KeyExchange`), if any."""

    def __init__(
        self,
        transport: Transport,
        identity: NodeIdentity,
        specs: list[TensorSpec],
        state: Mapping[str, torch.Tensor],
        stages: Sequence[UserStage],
        wait_s: float,
        stopped: Callable[[], bool],
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.specs = specs
        self.state = state
        self.stages = stages
        self.wait_s = wait_s
        self.stopped = stopped
        self._keys: KeyExchange | None = None

    def start(self, joined: JoinReply, secure: SecureTask) -> KeyExchange:
        """Start the round's key exchange in the background as soon as the task arrives: it
        then runs while the model downloads (the mask once it is downloaded) and the node
        trains. The same round's task pulled again keeps the exchange under way (and its
        keys)."""
        keys = self._keys
        if keys is not None and keys.round == secure.round and not keys.failed:
            return keys
        if keys is not None:
            keys.cancel()
        words = masked_words(sum(s.numel for s in self.specs))
        cancelled = threading.Event()
        channel = TransportChannel(
            self.transport,
            joined.auth,
            secure.round,
            self.identity,
            None,
            words,
            wait_s=self.wait_s,
            stopped=lambda: self.stopped() or cancelled.is_set(),
        )
        node_id = joined.auth.node_id

        def machine() -> NodeSecAgg:
            return NodeSecAgg(
                node_id, self.identity.key, channel.directory, secure.graph, secure.round, words
            )

        self._keys = KeyExchange(
            secure.round, channel, machine, cancelled, secure.dp_variance, words
        )
        return self._keys.start()

    def end(self) -> None:
        """This node is done with the secure round under way (pushed, or gave up on it)."""
        if self._keys is not None:
            self._keys.cancel()
            self._keys = None

    def push(
        self,
        joined: JoinReply,
        header: TaskHeader,
        secure: SecureTask,
        keys: KeyExchange,
        num_examples: int,
        trailer: Trailer,
        base: np.ndarray | None,
    ) -> int:
        """SecAgg+: the example count travels masked (the header says 1), the update as one
        int32 tensor of masked words through PushUpdate."""
        channel = keys.channel
        if not isinstance(channel, TransportChannel):  # pragma: no cover - start() made it
            raise TypeError("a node's key exchange runs over its transport")
        upload_specs = [masked_spec(channel.words - COUNT_WORDS)]

        def upload(blocks: Iterator[Block]) -> int:
            chunk_size = header.chunk_size or DEFAULT_CHUNK
            chunks = (
                Chunk(0, 4 * b.start + c.offset, c.data)
                for b in blocks
                for c in iter_chunks([raw_view(b.values.astype("<u4", copy=False))], chunk_size)
            )
            return self.transport.push(
                update_stream(joined, header, 1, upload_specs, chunks, trailer)
            )

        channel.upload = upload
        started = time.perf_counter()
        machine, pad = keys.pad()
        behind_s = time.perf_counter() - started
        values = model_blocks(
            to_float(tensor_bytes(t), spec.dtype)
            for spec, t in zip(self.specs, self.state.values(), strict=True)
        )
        times = keys.times
        rng = np.random.default_rng()
        floats, words = split(self.stages, secure=True)
        stages = secure_stages(secure, pad, num_examples, rng, base, floats, words)
        push_update(channel, machine, pad, values, num_examples, secure.quant, rng, times, stages)
        log.info(
            "round %d: secure aggregation: key exchange %.3fs (%.3fs of it masking; noise drawn "
            "alongside in %.3fs; waited %.3fs for them after training), %.3fs quantizing into "
            "the mask, %.3fs upload, %.3fs in SecAggStep calls",
            header.round,
            times.keys_s,
            times.mask_s,
            times.noise_s,
            behind_s,
            times.quantize_s,
            channel.upload_s,
            channel.waited_s,
        )
        return channel.sent
