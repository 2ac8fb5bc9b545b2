"""Distributed DP on the node: its noise share, drawn in a thread of its own.

:class:`NoiseDraw` draws ``N_Z(0, variance)`` for every value word of the masked upload (the
count word is left 0), block by block, stopping between blocks once ``cancelled`` is set. Its
owner (the round's :class:`~fedhive.client.secagg.KeyExchange`) starts it when the task arrives
and joins it before it adds the noise to the mask: the draw runs while the node downloads,
exchanges keys and trains. The noise is kept, so a repeated push adds the same noise again,
never a second, averageable draw.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from fedhive.common.errors import SecAggAbortedError
from fedhive.common.privacy.discrete_gaussian import KEY_BYTES, SecureBits
from fedhive.common.privacy.distributed import NOISE_BLOCK, add_noise
from fedhive.common.secagg.stages import COUNT_WORDS


class NoiseDraw:
    """One node's noise for one round (see the module)."""

    def __init__(self, variance: int, words: int, cancelled: threading.Event) -> None:
        self.variance, self.words, self.cancelled = variance, words, cancelled
        self.seconds = 0.0  # how long the draw took
        self._noise: np.ndarray | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._draw, name="fedhive-secagg-noise")

    @property
    def drawn(self) -> bool:
        return self._noise is not None

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()

    def _draw(self) -> None:
        try:
            started = time.perf_counter()
            noise = np.zeros(self.words, dtype=np.uint32)
            bits = SecureBits(os.urandom(KEY_BYTES))
            for lo in range(COUNT_WORDS, self.words, NOISE_BLOCK):  # block by block: cancellable
                if self.cancelled.is_set():
                    raise SecAggAbortedError("the secure round was given up")
                add_noise(noise[lo : lo + NOISE_BLOCK], self.variance, bits, skip=0)
            self._noise = noise
            self.seconds = time.perf_counter() - started
        except BaseException as exc:  # handed to add_to()
            self._error = exc

    def add_to(self, pad: np.ndarray) -> np.ndarray:
        """``pad`` plus the noise, mod 2^32, in place (once the draw is done)."""
        self.join()
        if self._error is not None:
            raise self._error
        if self._noise is None or self._noise.size != pad.size:
            raise SecAggAbortedError("the noise does not fit the mask")
        np.add(pad, self._noise, out=pad)
        return pad
