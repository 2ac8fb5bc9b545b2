"""A SecAgg+ round with real threads: node drivers against the coordinator's SecAggRound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import numpy as np
import pytest

from fedhive.client.secagg import KeyExchange, push_update, secure_push
from fedhive.common.api.hooks import Block, blocks_of, gather, run
from fedhive.common.errors import SecAggAbortedError, SecAggAuthError
from fedhive.common.secagg.graph import Graph
from fedhive.common.secagg.keys import KeyAdvert
from fedhive.common.secagg.node import NodeSecAgg
from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.secagg.stages import DequantizeStage, masked_words
from fedhive.server.secagg_round import SecAggRound, uint32_blocks
from tests.unit.secagg.harness import fixed_identity, node_ids

CFG = QuantConfig(clip=3.0, bits=12, max_weight=100)
ELEMENTS = 300
ROUND = 4


class Killed(Exception):
    """The node process died (test stand-in)."""


class LocalChannel:
    """The node's calls straight into the coordinator's round; ``kill_at`` ends the node there."""

    def __init__(self, rnd: SecAggRound, node: str, kill_at: str | None = None) -> None:
        self.rnd, self.node, self.kill_at = rnd, node, kill_at

    def _step(self, step: str) -> None:
        if step == self.kill_at:
            self.rnd.drop(self.node)  # what the heartbeat monitor does once the node is gone
            raise Killed(step)

    def advertise(self, advert: KeyAdvert) -> list[KeyAdvert]:
        self._step("adverts")
        return self.rnd.advertise(self.node, advert)

    def share_keys(self, sealed):
        self._step("shares")
        return self.rnd.share_keys(self.node, sealed)

    def push_masked(self, blocks: Iterable[Block]) -> None:
        self._step("masked")
        raw = b"".join(b.values.astype("<u4").tobytes() for b in blocks)  # staged, then folded
        self.rnd.fold_masked(self.node, uint32_blocks([raw[: 40 * 4], raw[40 * 4 :]]))

    def await_unmask(self):
        return self.rnd.await_unmask(self.node)

    def unmask(self, reply) -> None:
        self._step("unmask")
        self.rnd.unmask(self.node, reply)


def run_federation(n: int, kills: dict[str, str], *, threshold: int | None = None, forge=()):
    ids = node_ids(n)
    graph = Graph.build(ids, seed=ROUND, threshold=threshold)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    if forge:  # the coordinator's directory and the nodes' agree; the forger signs with another key
        for u in forge:
            identities[u] = fixed_identity(99)
    rnd = SecAggRound(graph, ROUND, masked_words(ELEMENTS), directory, step_timeout_s=30.0)
    rng = np.random.default_rng(0)
    values = {u: rng.normal(0, 1, ELEMENTS) for u in ids}
    weights = {u: 5 + 3 * i for i, u in enumerate(ids)}
    errors: dict[str, BaseException] = {}

    def node_main(u: str) -> None:
        machine = NodeSecAgg(u, identities[u], directory, graph, ROUND, masked_words(ELEMENTS))
        try:
            secure_push(
                LocalChannel(rnd, u, kills.get(u)),
                machine,
                blocks_of(values[u], 64),
                weights[u],
                CFG,
                np.random.default_rng(7),
            )
        except BaseException as exc:  # recorded for the asserts
            errors[u] = exc

    threads = [threading.Thread(target=node_main, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    try:
        mean = gather(run([DequantizeStage(CFG)], rnd.result()), ELEMENTS, np.float64)
    except SecAggAbortedError as exc:
        mean = exc
    for t in threads:
        t.join(timeout=60)
    return mean, values, weights, errors, rnd


def weighted_mean(values, weights, members):
    total = sum(weights[u] for u in members)
    return sum(weights[u] * np.clip(values[u], -CFG.clip, CFG.clip) for u in members) / total, total


@pytest.mark.parametrize("kill_at", [None, "adverts", "shares", "masked", "unmask"])
def test_round_completes_with_a_node_killed_at_any_step(kill_at: str | None) -> None:
    # Prepare
    n = 5
    victim = node_ids(n)[2]
    kills = {victim: kill_at} if kill_at else {}
    # Execute
    mean, values, weights, errors, _ = run_federation(n, kills)
    # Assert: the survivors' weighted mean (a node killed after its masked input still counts).
    counted = [u for u in node_ids(n) if u != victim or kill_at in (None, "unmask")]
    expected, total = weighted_mean(values, weights, counted)
    assert isinstance(mean, np.ndarray), mean
    assert np.max(np.abs(mean - expected)) <= len(counted) * CFG.step / total
    assert set(errors) == ({victim} if kill_at else set())


def test_too_many_dropouts_abandon_the_round_for_everyone() -> None:
    # Prepare: t = 3 of 5, three nodes die before their masked input.
    n = 5
    kills = {u: "masked" for u in node_ids(n)[:3]}
    # Execute
    mean, _, _, errors, _ = run_federation(n, kills, threshold=3)
    # Assert
    assert isinstance(mean, SecAggAbortedError) and "abandoned" in str(mean)
    survivors = node_ids(n)[3:]
    assert all(isinstance(errors[u], SecAggAbortedError) for u in survivors)


def test_forged_advert_stops_the_round_for_that_node_only() -> None:
    # Prepare: node-01 signs its advert with a key that is not its pinned identity.
    n = 5
    forger = node_ids(n)[1]
    # Execute
    mean, values, weights, errors, rnd = run_federation(n, {}, forge=[forger])
    # Assert
    members = [u for u in node_ids(n) if u != forger]
    expected, total = weighted_mean(values, weights, members)
    assert isinstance(errors[forger], SecAggAuthError) and errors[forger].node == forger
    assert forger in rnd.refused and set(errors) == {forger}
    assert isinstance(mean, np.ndarray)
    assert np.max(np.abs(mean - expected)) <= len(members) * CFG.step / total


def test_step_out_of_order_is_refused() -> None:
    graph = Graph.build(node_ids(3), seed=0)
    rnd = SecAggRound(graph, 1, 5, {}, step_timeout_s=5.0)
    with pytest.raises(SecAggAbortedError, match="out of order"):
        rnd.share_keys(node_ids(3)[0], [])


def test_a_silent_node_is_waited_for_until_the_step_deadline() -> None:
    # Prepare: a manual clock; node-02 never advertises and is never reported dropped.
    now = [0.0]
    ids = node_ids(3)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    graph = Graph.build(ids, seed=0, threshold=2)
    rnd = SecAggRound(graph, 1, 5, directory, step_timeout_s=10.0, clock=lambda: now[0])
    machines = {u: NodeSecAgg(u, identities[u], directory, graph, 1, 5) for u in ids[:2]}
    replies: dict[str, list[KeyAdvert]] = {}
    threads = [
        threading.Thread(
            target=lambda u=u: replies.__setitem__(u, rnd.advertise(u, machines[u].advertise()))
        )
        for u in ids[:2]
    ]
    for t in threads:
        t.start()
    # Execute: still open before the deadline; closed after it.
    threads[0].join(0.3)
    open_before = rnd.step
    now[0] = 11.0
    for t in threads:
        t.join(10)
    # Assert
    assert open_before == "adverts" and rnd.step == "shares"
    assert [a.node for a in replies[ids[0]]] == [ids[1]]


def test_the_masked_step_waits_until_the_rounds_deadline_not_the_step_timeout() -> None:
    # Prepare: a manual clock; steps time out after 10 s, the masked step (the nodes train in
    # it) at 100 s; three nodes exchange keys, then two upload.
    now = [0.0]
    ids = node_ids(3)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    graph = Graph.build(ids, seed=0, threshold=2)
    words = masked_words(ELEMENTS)
    rnd = SecAggRound(
        graph, 1, words, directory, step_timeout_s=10.0, masked_deadline=100.0,
        clock=lambda: now[0],
    )  # fmt: skip
    machines = {u: NodeSecAgg(u, identities[u], directory, graph, 1, words) for u in ids}
    pads: dict[str, np.ndarray] = {}

    def exchange(u: str) -> None:
        adverts = rnd.advertise(u, machines[u].advertise())
        machines[u].receive_shares(rnd.share_keys(u, machines[u].share_keys(adverts)))
        pads[u] = machines[u].pad()

    threads = [threading.Thread(target=exchange, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for u in ids[:2]:
        rnd.fold_masked(u, [Block(0, pads[u])])
    # Execute: past the step timeout the masked step is still open; past the deadline it closes
    now[0] = 50.0
    rnd.poll()
    open_at_50 = rnd.step
    now[0] = 100.0
    rnd.poll()
    # Assert
    assert open_at_50 == "masked" and rnd.step == "unmask"
    assert set(rnd.await_unmask(ids[0]).survivors) == set(ids[:2])


def test_a_node_advertising_other_keys_in_a_repeated_call_is_refused() -> None:
    # Prepare: node-00 advertised; a restarted node would come back with fresh keys
    ids = node_ids(3)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    graph = Graph.build(ids, seed=0, threshold=2)
    rnd = SecAggRound(graph, 1, 5, directory, step_timeout_s=10.0)
    first = NodeSecAgg(ids[0], identities[ids[0]], directory, graph, 1, 5)
    again = NodeSecAgg(ids[0], identities[ids[0]], directory, graph, 1, 5)
    advert = first.advertise()
    assert rnd.advertise(ids[0], advert, wait_s=0.0) is not None
    # Execute / Assert: the same advert again only waits; other keys are refused
    assert rnd.advertise(ids[0], advert, wait_s=0.0) is not None
    with pytest.raises(SecAggAbortedError, match="other keys than before"):
        rnd.advertise(ids[0], again.advertise(), wait_s=0.0)


def test_key_exchange_runs_ahead_and_masks_only_once_allowed() -> None:
    # Prepare: three nodes exchange keys in background threads, as a node does while it trains
    ids = node_ids(3)
    graph = Graph.build(ids, seed=ROUND)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    words = masked_words(ELEMENTS)
    rnd = SecAggRound(graph, ROUND, words, directory, step_timeout_s=30.0)
    exchanges = {
        u: KeyExchange(
            ROUND,
            LocalChannel(rnd, u),
            lambda u=u: NodeSecAgg(u, identities[u], directory, graph, ROUND, words),
        ).start()
        for u in ids
    }
    values = {u: np.full(ELEMENTS, 0.5 * (i + 1)) for i, u in enumerate(ids)}
    # Execute: the exchange completes without the update; masking waits for allow_masking
    deadline = time.monotonic() + 20
    while rnd.step != "masked" and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time enough to mask 300 words, were it allowed
    masked_early = [x.times.mask_s for x in exchanges.values()]
    for x in exchanges.values():
        x.allow_masking()
    pads = {u: x.pad() for u, x in exchanges.items()}
    again = exchanges[ids[0]].pad()[1]  # a repeated push gets the same mask, computed again
    errors: list[BaseException] = []

    def push(u: str) -> None:
        machine, pad = pads[u]
        try:
            push_update(
                LocalChannel(rnd, u), machine, pad, blocks_of(values[u], 64), 10, CFG,
                np.random.default_rng(3), exchanges[u].times,
            )  # fmt: skip
        except BaseException as exc:  # recorded for the asserts
            errors.append(exc)

    snapshot = pads[ids[0]][1].copy()
    threads = [threading.Thread(target=push, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    mean = gather(run([DequantizeStage(CFG)], rnd.result()), ELEMENTS, np.float64)
    for t in threads:
        t.join(20)
    # Assert
    assert masked_early == [0.0, 0.0, 0.0]
    assert np.array_equal(again, snapshot) and again is not pads[ids[0]][1]
    assert not errors
    assert np.max(np.abs(mean - 1.0)) <= 3 * CFG.step / 30


def test_key_exchange_hands_its_error_to_the_pusher() -> None:
    # Prepare: the node is not part of the round's graph
    graph = Graph.build(node_ids(3), seed=ROUND)
    rnd = SecAggRound(graph, ROUND, 5, {}, step_timeout_s=5.0)

    def machine() -> NodeSecAgg:
        return NodeSecAgg("stranger", fixed_identity(0), {}, graph, ROUND, 5)

    # Execute
    exchange = KeyExchange(ROUND, LocalChannel(rnd, "stranger"), machine).start()
    # Assert
    with pytest.raises(SecAggAbortedError, match="not part of round"):
        exchange.pad()
    assert exchange.failed


def test_distributed_dp_noise_is_drawn_before_masking_is_allowed_and_reused() -> None:
    # Prepare: three nodes with distributed DP noise; none may mask yet (still downloading)
    ids = node_ids(3)
    graph = Graph.build(ids, seed=ROUND)
    identities = {u: fixed_identity(i) for i, u in enumerate(ids)}
    directory = {u: k.public_key() for u, k in identities.items()}
    words = masked_words(ELEMENTS)
    rnd = SecAggRound(graph, ROUND, words, directory, step_timeout_s=30.0)
    variance = 10**6
    exchanges = {
        u: KeyExchange(
            ROUND,
            LocalChannel(rnd, u),
            lambda u=u: NodeSecAgg(u, identities[u], directory, graph, ROUND, words),
            noise_variance=variance,
            words=words,
        ).start()
        for u in ids
    }

    # Execute: wait (with a deadline) until every node's noise is drawn, masking still barred
    deadline = time.monotonic() + 20
    while not all(x.noise_drawn for x in exchanges.values()):
        assert time.monotonic() < deadline, "the noise was not drawn before masking"
        time.sleep(0.01)
    masked_early = [x.times.mask_s for x in exchanges.values()]
    for x in exchanges.values():
        x.allow_masking()
    machine, pad = exchanges[ids[0]].pad()
    first = pad.copy()
    again = exchanges[ids[0]].pad()[1]  # a repeated push: the mask again, the same noise
    noise = (first - machine.pad()).view(np.int32).astype(np.int64)
    for u in ids[1:]:  # the others' threads end too
        exchanges[u].pad()

    # Assert: drawn before any masking; the mask carries it (the count word is left), the same
    # noise on a repeated push (no second, averageable draw), of the variance asked for (300
    # samples: the bounds are 6 standard deviations of the sample variance)
    assert masked_early == [0.0, 0.0, 0.0]
    assert np.array_equal(again, first)
    assert noise[0] == 0
    assert 0.5 * variance < float(np.var(noise[1:])) < 1.5 * variance
