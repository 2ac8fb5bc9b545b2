"""One SecAgg+ round on the coordinator, thread-safe: the steps of ServerSecAgg as barriers.

Transport-agnostic (no grpc): the servicer (or a test) calls the node-facing methods from its
worker threads. Each step has an *expected* set (the previous step's participants) and closes
when every expected node either arrived or was dropped (the round engine calls :meth:`drop`
when a node misses its heartbeats or leaves), or when the step's deadline passes: for the
masked step the round's collection deadline (``masked_deadline``: nodes exchange keys when the
task arrives and train afterwards, so that step spans their training), for the others
``step_timeout_s`` after the previous step closed. A node call
waits until its step closes and returns that node's input for the next step; given ``wait_s``
it returns ``PENDING`` when that passes first, and the node calls again (a repeated call delivers
nothing twice, it only waits)::

    advertise(node, advert)        -> the neighbours' adverts
    share_keys(node, sealed)       -> the sealed shares addressed to the node
    fold_masked(node, blocks)      (the masked update, once its stream was staged and verified)
    await_unmask(node)             -> the unmask request (survivors)
    unmask(node, reply)
    result()                       -> the unmasked sum, as blocks (the round engine's thread)

Anything that stops the round (fewer than t nodes left at a step, a reconstruction that fails)
is stored and re-raised to every caller as the same
:class:`~fedhive.common.errors.SecAggAbortedError`; the global model is left untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhive.common.api.hooks import Block
from fedhive.common.errors import SecAggAbortedError, SecAggAuthError, SecAggError
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import Pending, SealedShares, UnmaskReply, UnmaskRequest
from fedhive.common.secagg.server import ServerSecAgg

STEPS = ("adverts", "shares", "masked", "unmask")
PENDING = Pending(retry_after_s=0.0)
_POLL_S = 0.05


class SecAggRound:
    def __init__(
        self,
        graph: Graph,
        round_: int,
        words: int,
        directory: Mapping[str, Ed25519PublicKey],
        *,
        step_timeout_s: float,
        masked_deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.machine = ServerSecAgg(graph, round_, words, directory)
        self.round = round_
        self.step_timeout_s = step_timeout_s
        self.masked_deadline = masked_deadline  # on ``clock``; None: step_timeout_s
        self._clock = clock
        self._cv = threading.Condition()
        self._step = 0
        self._deadline = clock() + step_timeout_s
        self._expected: set[str] = set(graph.nodes)
        self._arrived: set[str] = set()
        self.dropped: set[str] = set()
        self.refused: set[str] = set()
        self._outputs: list[Any] = [None] * len(STEPS)
        self._joined: list[set[str]] = [set() for _ in STEPS]  # who delivered each step
        self._error: SecAggError | None = None

    # ------------------------------------------------------------------ barrier plumbing
    def _fail(self, exc: SecAggError) -> None:
        if self._error is None:
            self._error = exc
        self._cv.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise SecAggAbortedError(
                f"secagg round {self.round} was abandoned: {self._error}", node=self._error.node
            )

    def _maybe_close(self) -> None:
        """Close the current step if everyone expected arrived or dropped, or time is up."""
        if self._error is not None or self._step >= len(STEPS):
            return
        waiting = self._expected - self._arrived - self.dropped
        if waiting and self._clock() < self._deadline:
            return
        try:
            self._outputs[self._step] = self._close(STEPS[self._step])
        except SecAggError as exc:
            self._fail(exc)
            return
        self._step += 1
        self._expected = set(self._arrived) - self.dropped
        self._arrived = set()
        self._deadline = self._clock() + self.step_timeout_s
        if STEPS[min(self._step, len(STEPS) - 1)] == "masked" and self.masked_deadline is not None:
            self._deadline = max(self.masked_deadline, self._clock())
        self._cv.notify_all()

    def _close(self, step: str) -> Any:
        m = self.machine
        if step == "adverts":
            return m.close_adverts()
        if step == "shares":
            return m.close_shares()
        if step == "masked":
            return m.close_masked()
        m.prepare_unmask()
        return True

    def _enter(self, step: str, node: str) -> tuple[int, bool]:
        """The step's index, and whether this call repeats one already taken (idempotent)."""
        index = STEPS.index(step)
        self._raise_if_failed()
        if node in self._joined[index]:
            return index, True
        if self._step != index or node not in self._expected:
            raise SecAggAbortedError(
                f"node {node!r}: secagg {step} message out of order or unexpected", node=node
            )
        return index, False

    def _arrive(self, index: int, node: str) -> None:
        self._joined[index].add(node)
        self._arrived.add(node)
        self._maybe_close()

    def _await(self, index: int, wait_s: float | None = None) -> Any:
        """The step's output once it closed; PENDING when ``wait_s`` passes first."""
        until = None if wait_s is None else self._clock() + max(wait_s, 0.0)
        while True:
            self._raise_if_failed()
            if self._step > index:
                return self._outputs[index]
            self._maybe_close()
            if self._step <= index and self._error is None:
                if until is not None and self._clock() >= until:
                    return PENDING
                self._cv.wait(_POLL_S)

    # ------------------------------------------------------------------ node-facing steps
    # Each step call may be repeated (after a PENDING answer, or a retried RPC): a repeat does
    # not deliver the message again, it only waits for the step's output.
    def advertise(
        self, node: str, advert: KeyAdvert, wait_s: float | None = None
    ) -> list[KeyAdvert] | Pending:
        with self._cv:
            index, repeat = self._enter("adverts", node)
            if repeat and self.machine.adverts.get(node) != advert:
                # a node that lost track of its keys (a restart within the round) would mask
                # with keys its peers never saw: the sum would be garbage, so it is out
                raise SecAggAbortedError(
                    f"node {node!r} advertised other keys than before in round {self.round}",
                    node=node,
                )
            if not repeat:
                if advert.node != node:
                    raise SecAggAbortedError(f"node {node!r} sent another node's advert", node=node)
                try:
                    self.machine.receive_advert(advert)
                except SecAggAuthError:
                    self._refuse(node)  # a forged advert stops the round for that node
                    raise
                self._arrive(index, node)
            out = self._await(index, wait_s)
            return out if out is PENDING else list(out.get(node, []))

    def share_keys(
        self, node: str, sealed: list[SealedShares], wait_s: float | None = None
    ) -> list[SealedShares] | Pending:
        with self._cv:
            index, repeat = self._enter("shares", node)
            if not repeat:
                self.machine.receive_shares(node, sealed)
                self._arrive(index, node)
            out = self._await(index, wait_s)
            return out if out is PENDING else list(out.get(node, []))

    def fold_masked(self, node: str, blocks: Iterable[Block]) -> None:
        """Fold a node's whole (already staged and verified) masked update."""
        with self._cv:
            index, repeat = self._enter("masked", node)
            if repeat:
                raise SecAggAbortedError(f"node {node!r} sent its masked input twice", node=node)
            for block in blocks:
                self.machine.masked_chunk(node, block.start, block.values)
            self.machine.masked_end(node)
            self._arrive(index, node)

    def await_unmask(self, node: str, wait_s: float | None = None) -> UnmaskRequest | Pending:
        with self._cv:
            request: UnmaskRequest | Pending = self._await(STEPS.index("masked"), wait_s)
            if isinstance(request, Pending):
                return request
            if node not in request.survivors:
                raise SecAggAbortedError(f"node {node!r} is not a survivor", node=node)
            return request

    def unmask(self, node: str, reply: UnmaskReply) -> None:
        with self._cv:
            index, repeat = self._enter("unmask", node)
            if repeat:
                return
            if reply.node != node:
                raise SecAggAbortedError(f"node {node!r} sent another node's reply", node=node)
            try:
                self.machine.receive_unmask(reply)
            except SecAggAuthError:
                self._refuse(node)
                raise
            self._arrive(index, node)

    def _refuse(self, node: str) -> None:
        self.dropped.add(node)
        self.refused.add(node)
        self._maybe_close()

    def drop(self, node: str) -> None:
        """The node is gone (missed heartbeats, left): steps stop waiting for it."""
        with self._cv:
            self.dropped.add(node)
            self._maybe_close()
            self._cv.notify_all()

    # ------------------------------------------------------------------ round engine
    def result(self, workers: int = 1) -> Iterator[Block]:
        """Block until the unmask step closed; then the unmasked sum, block by block, in order
        (``workers`` threads unmask blocks ahead of the caller)."""
        with self._cv:
            self._await(STEPS.index("unmask"))
        for start, words in self.machine.unmasked_blocks(workers):
            yield Block(start, words)

    def abandon(self, reason: str) -> None:
        """Stop the round (the round engine gave up on it): every caller gets the error."""
        with self._cv:
            self._fail(SecAggAbortedError(reason))

    def poll(self) -> None:
        """Close the current step if its deadline passed (the round engine's watch loop)."""
        with self._cv:
            self._maybe_close()

    @property
    def finished(self) -> bool:
        """The unmask step closed, or the round was abandoned."""
        with self._cv:
            return self._error is not None or self._step >= len(STEPS)

    @property
    def error(self) -> SecAggError | None:
        with self._cv:
            return self._error

    @property
    def step(self) -> str:
        with self._cv:
            return STEPS[self._step] if self._step < len(STEPS) else "done"


def uint32_blocks(pieces: Iterable[memoryview | bytes], *, start: int = 0) -> Iterator[Block]:
    """Raw little-endian words (a staged update's pieces) as uint32 blocks."""
    pos = start
    for piece in pieces:
        words = np.frombuffer(piece, dtype="<u4").copy()
        yield Block(pos, words)
        pos += words.size
