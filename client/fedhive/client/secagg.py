"""The node's side of a SecAgg+ round over any channel to the coordinator.

:func:`secure_push` runs the four steps: advertise keys, deal shares, stream the clipped,
weighted, quantized and masked update, reveal shares for the survivors. The channel is a small
Protocol, so the same code runs over gRPC and, in tests, against the coordinator's
:class:`~fedhive.server.secagg_round.SecAggRound` in one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from fedhive.common.hooks import Block, Stage, run
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.messages import SealedShares, UnmaskReply, UnmaskRequest
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
