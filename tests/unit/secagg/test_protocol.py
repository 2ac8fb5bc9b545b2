"""SecAgg+ state machines: exact sums under dropouts, clean aborts, and named culprits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import FedhiveError, SecAggAbortedError, SecAggAuthError, SecAggError
from fedhive.common.secagg.messages import RevealedShare, SealedShares, SignedShare, UnmaskReply
from tests.unit.secagg.harness import (
    STEPS,
    federation,
    node_ids,
    plain_sum,
    run_round,
)


def random_inputs(n: int, words: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 1 << 32, words, dtype=np.uint32) for u in node_ids(n)}


def contributors(n: int, drops: dict[str, list[str]]) -> list[str]:
    early = {u for step in ("advertise", "share", "masked") for u in drops.get(step, [])}
    return [u for u in node_ids(n) if u not in early]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("count", ["none", "one", "max"])
def test_sum_is_exact_with_dropouts_at_each_step(step: str, count: str) -> None:
    # Prepare: 6 nodes, complete graph, t = 4: at most n - t = 2 dropouts.
    n, t, words = 6, 4, 300
    inputs = random_inputs(n, words, seed=3)
    fed = federation(n, words, threshold=t)
    dropped = {"none": 0, "one": 1, "max": n - t}[count]
    drops = {step: node_ids(n)[1 : 1 + dropped]}
    # Execute
    total = run_round(fed, inputs, drops)
    # Assert
    np.testing.assert_array_equal(total, plain_sum(inputs, contributors(n, drops)))


@given(
    data=st.data(),
    n=st.integers(2, 7),
    words=st.integers(1, 200),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_sum_is_exact_for_any_recoverable_drop_pattern(
    data: st.DataObject, n: int, words: int, chunk: int, seed: int
) -> None:
    # Prepare: a complete graph, or a sparse even-degree graph when n allows it.
    degrees = [n - 1] + [k for k in range(2, n - 1, 2)]
    k = data.draw(st.sampled_from(degrees), label="degree")
    t = data.draw(st.integers((k + 1) // 2 + 1, k + 1), label="threshold")
    budget = k + 1 - t  # every closed neighbourhood keeps >= t holders
    victims = data.draw(st.lists(st.sampled_from(node_ids(n)), unique=True, max_size=budget))
    steps = data.draw(
        st.lists(st.sampled_from(STEPS), min_size=len(victims), max_size=len(victims))
    )
    drops: dict[str, list[str]] = {}
    for victim, step in zip(victims, steps, strict=True):
        drops.setdefault(step, []).append(victim)
    inputs = random_inputs(n, words, seed)
    fed = federation(n, words, degree=k, threshold=t, seed=seed, chunk_words=chunk + 3)
    # Execute
    total = run_round(fed, inputs, drops, chunk=chunk)
    # Assert
    np.testing.assert_array_equal(total, plain_sum(inputs, contributors(n, drops)))


def test_sparse_graph_recovers_dropped_neighbours() -> None:
    # Prepare: 20 nodes, k = 4 neighbours each, t = 3 of the 5 holders; two dropouts.
    n, words = 20, 50
    inputs = random_inputs(n, words, seed=5)
    fed = federation(n, words, degree=4, threshold=3)
    drops = {"masked": [node_ids(n)[0]], "unmask": [node_ids(n)[1]]}
    # Execute
    total = run_round(fed, inputs, drops)
    # Assert
    assert all(len(fed.graph.neighbours(u)) == 4 for u in node_ids(n))
    np.testing.assert_array_equal(total, plain_sum(inputs, contributors(n, drops)))


@pytest.mark.parametrize("step", STEPS)
def test_fewer_than_t_survivors_abandons_the_round(step: str) -> None:
    # Prepare: n - t + 1 dropouts, one more than can be recovered.
    n, t, words = 5, 3, 20
    fed = federation(n, words, threshold=t)
    drops = {step: node_ids(n)[: n - t + 1]}
    # Execute / Assert
    with pytest.raises(SecAggAbortedError, match="abandoned"):
        run_round(fed, random_inputs(n, words, 1), drops)


def test_half_fed_stream_abandons_the_round() -> None:
    # Prepare: one node's masked stream stops after its first chunk.
    n, words = 3, 10
    fed = federation(n, words)
    srv = fed.server
    for u in node_ids(n):
        srv.receive_advert(fed.nodes[u].advertise())
    adverts = srv.close_adverts()
    for u in node_ids(n):
        srv.receive_shares(u, fed.nodes[u].share_keys(adverts[u]))
    routed = srv.close_shares()
    first = node_ids(n)[0]
    fed.nodes[first].receive_shares(routed[first])
    srv.masked_chunk(first, 0, fed.nodes[first].mask(0, np.zeros(4, dtype=np.uint32)))
    # Execute / Assert
    with pytest.raises(SecAggAbortedError, match="only in part"):
        srv.close_masked()


def test_forged_advert_is_refused_by_coordinator_and_nodes() -> None:
    # Prepare: node-01's advert re-signed by node-02's identity key.
    fed = federation(3, 8)
    a, b, c = node_ids(3)
    honest = fed.nodes[b].advertise()
    forged_sig = fed.identities[c].sign(honest.signed_bytes())
    forged = dataclasses.replace(honest, signature=forged_sig)
    fed.server.receive_advert(fed.nodes[a].advertise())
    # Execute / Assert: the coordinator names the node.
    with pytest.raises(SecAggAuthError) as at_server:
        fed.server.receive_advert(forged)
    fed.nodes[c].advertise()
    with pytest.raises(SecAggAuthError) as at_node:
        fed.nodes[c].share_keys([forged])
    assert at_server.value.node == b and at_node.value.node == b
    assert b in str(at_server.value)


def test_swapped_key_in_advert_is_refused() -> None:
    # Prepare: the coordinator replaces node-01's mask key by its own.
    fed = federation(3, 8)
    a, b, _ = node_ids(3)
    advert = fed.nodes[b].advertise()
    fed.nodes[a].advertise()
    swapped = dataclasses.replace(advert, s_pk=bytes(range(32)))
    # Execute / Assert
    with pytest.raises(SecAggAuthError, match=b):
        fed.nodes[a].share_keys([swapped])


def _to_share_step(n: int, words: int):
    fed = federation(n, words)
    srv = fed.server
    for u in node_ids(n):
        srv.receive_advert(fed.nodes[u].advertise())
    adverts = srv.close_adverts()
    for u in node_ids(n):
        srv.receive_shares(u, fed.nodes[u].share_keys(adverts[u]))
    return fed, srv.close_shares()


def test_share_that_does_not_decrypt_names_its_sender() -> None:
    # Prepare: flip one bit of the ciphertext node-00 sealed for node-02.
    fed, routed = _to_share_step(4, 8)
    a, _, c, _ = node_ids(4)
    msgs = [
        SealedShares(m.sender, m.receiver, m.round, m.sealed[:-1] + bytes([m.sealed[-1] ^ 1]))
        if m.sender == a
        else m
        for m in routed[c]
    ]
    # Execute / Assert
    with pytest.raises(SecAggAuthError) as err:
        fed.nodes[c].receive_shares(msgs)
    assert err.value.node == a and a in str(err.value)


def test_tampered_revealed_share_names_the_node_and_changes_nothing() -> None:
    # Prepare: a full round up to the unmask step, no dropouts.
    n, words = 4, 30
    fed, routed = _to_share_step(n, words)
    inputs = random_inputs(n, words, seed=9)
    srv = fed.server
    for u in node_ids(n):
        fed.nodes[u].receive_shares(routed[u])
        srv.masked_chunk(u, 0, fed.nodes[u].mask(0, inputs[u].copy()))
        srv.masked_end(u)
    request = srv.close_masked()
    replies = {u: fed.nodes[u].unmask(request) for u in node_ids(n)}
    liar = node_ids(n)[1]
    first = replies[liar].shares[0]
    bad_share = first.signed.share[:-1] + bytes([first.signed.share[-1] ^ 1])
    tampered = RevealedShare(
        first.owner, first.kind, SignedShare(bad_share, first.signed.signature)
    )
    bad = UnmaskReply(liar, replies[liar].round, (tampered, *replies[liar].shares[1:]))
    # Execute
    with pytest.raises(SecAggAuthError) as err:
        srv.receive_unmask(bad)
    for u in node_ids(n):
        if u != liar:
            srv.receive_unmask(replies[u])
    total = srv.finish()
    # Assert: named, and the honest replies still unmask the exact sum.
    assert err.value.node == liar
    np.testing.assert_array_equal(total, plain_sum(inputs, node_ids(n)))


def test_steps_out_of_order_are_refused() -> None:
    # Prepare
    fed = federation(3, 4)
    node = fed.nodes[node_ids(3)[0]]
    # Execute / Assert
    with pytest.raises(SecAggAbortedError, match="out of order"):
        node.share_keys([])
    with pytest.raises(SecAggAbortedError, match="out of order"):
        fed.server.close_shares()


def test_secagg_errors_belong_to_the_one_tree() -> None:
    assert issubclass(SecAggAuthError, SecAggError)
    assert issubclass(SecAggAbortedError, SecAggError)
    assert issubclass(SecAggError, FedhiveError)
