"""The accountant (Opacus's RDP analysis) against Google's dp-accounting, and the run's budget:
stop before the round that would exceed it, replay from committed records."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.common.privacy import rdp
from fedhive.common.privacy.distributed import DistributedDPSettings, plan, round_privacy
from fedhive.common.privacy.rdp import ORDERS, rdp_epsilon, step_rdp
from fedhive.server.privacy.budget import RunPrivacy
from fedhive.server.privacy.central import CentralDP
from fedhive.server.strategy.fedavg import FedAvg

# (sampling rate, noise multiplier, rounds): full participation, cross-device-like sampling, many
# rounds at a small rate
KNOWN = [(1.0, 1.0, 10), (1.0, 4.0, 50), (0.1, 1.1, 100), (0.5, 2.0, 20), (0.01, 0.8, 1000)]
INTEGER_ORDERS = [a for a in ORDERS if float(a).is_integer()]


def reference(q: float, z: float, rounds: int, orders: list[float]) -> RdpAccountant:
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    accountant = RdpAccountant(orders)
    accountant.compose(event, rounds)
    return accountant


@pytest.mark.parametrize(("q", "z", "rounds"), KNOWN)
def test_accountant_equals_dp_accounting(q: float, z: float, rounds: int) -> None:
    # Prepare / Execute
    ours = step_rdp(z, q) * rounds
    theirs = reference(q, z, rounds, INTEGER_ORDERS)

    # Assert: the RDP curves agree at the integer orders (closed forms in both), and epsilon
    # at delta 1e-5 within 1% (dp-accounting drops fractional orders it cannot converge on)
    mask = [float(a).is_integer() for a in ORDERS]
    assert np.allclose(ours[mask], theirs._rdp, rtol=1e-9)
    full = reference(q, z, rounds, list(ORDERS)).get_epsilon(1e-5)
    assert rdp_epsilon(ours, 1e-5) == pytest.approx(full, rel=1e-2)


def config(max_epsilon: float | None = None) -> ServerConfig:
    dp = {"delta": 1e-5, "central": {"noise_multiplier": 2.0, "clip": 1.0}}
    if max_epsilon is not None:
        dp["max_epsilon"] = max_epsilon
    return ServerConfig.model_validate({"insecure": True, "dp": dp})


def privacy_for(cfg: ServerConfig, events: list[dict] = []) -> RunPrivacy:  # noqa: B006
    assert cfg.dp is not None and cfg.dp.central is not None
    return RunPrivacy.for_run(cfg, CentralDP(FedAvg(), cfg.dp.central), events)


def commit(privacy: RunPrivacy, number: int, selected: int, alive: int) -> dict:
    assert privacy.before_round(number, selected, alive) is None
    event = {"event": "round", "round": number, "committed": True, "nodes": {"a": {"weight": 0.9}}}
    event["privacy"] = privacy.committed(event)
    return event


def test_budget_stops_before_the_round_that_would_exceed_it() -> None:
    # Prepare: epsilon after 3 and 4 full-participation rounds at z = 2
    eps3 = rdp_epsilon(3 * step_rdp(2.0, 1.0), 1e-5)
    eps4 = rdp_epsilon(4 * step_rdp(2.0, 1.0), 1e-5)
    privacy = privacy_for(config(max_epsilon=(eps3 + eps4) / 2))

    # Execute
    events = [commit(privacy, r, 2, 2) for r in (1, 2, 3)]
    why = privacy.before_round(4, 2, 2)

    # Assert: three rounds fit, the fourth is refused naming the setting; the records carry it
    assert why is not None and "max_epsilon" in why and "round 4" in why
    assert events[-1]["privacy"]["central"]["epsilon"] == pytest.approx(eps3)
    assert events[-1]["privacy"]["central"]["sample_rate"] == 1.0
    assert events[-1]["nodes"]["a"]["weight"] == 0.5  # 1 / selected, not the example share


def test_replayed_accountant_equals_the_continuous_one() -> None:
    # Prepare: a run of rounds with varying sampling rates; its committed records (plus an
    # uncommitted attempt, which released nothing)
    live = privacy_for(config())
    events = [commit(live, r, s, a) for r, (s, a) in enumerate([(2, 5), (3, 5), (5, 5)], 1)]
    events.insert(1, {"event": "round", "round": 2, "committed": False})

    # Execute: a restarted coordinator rebuilds it from the records
    resumed = privacy_for(config(), events)

    # Assert
    assert resumed.rounds == 3
    assert resumed.epsilon == pytest.approx(live.epsilon, rel=1e-12)
    assert resumed.epsilon == pytest.approx(events[-1]["privacy"]["central"]["epsilon"])


def test_other_levels_entries_are_kept() -> None:
    privacy = privacy_for(config())
    assert privacy.before_round(1, 2, 2) is None
    event = {"privacy": {"sgd": {"max": 1.5}}, "nodes": {}}
    assert set(privacy.committed(event) or {}) == {"sgd", "central"}


def test_a_delta_not_below_one_over_the_connected_nodes_is_refused_when_the_round_opens() -> None:
    # Prepare: delta 0.2 passes min_nodes = 2 (1/2) at start, but 10 nodes connected
    cfg = ServerConfig.model_validate(
        {"insecure": True, "dp": {"delta": 0.2, "central": {"noise_multiplier": 1, "clip": 1}}}
    )
    privacy = privacy_for(cfg)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"\[dp\] delta = 0\.2 is not below 1/nodes = 1/10"):
        privacy.before_round(1, 2, 10)
    assert privacy.before_round(1, 2, 4) is None


DDP = {"noise_multiplier": 1.0, "clip": 1.0, "bits": 16, "expected_dropout": 0.25}


def ddp_config(max_epsilon: float) -> ServerConfig:
    dp = {"delta": 1e-5, "max_epsilon": max_epsilon, "distributed": DDP}
    return ServerConfig.model_validate(
        {"secure_aggregation": "secagg+", "insecure": True, "dp": dp}
    )


def test_the_distributed_budget_counts_the_stored_rounds_at_the_expected_survivors() -> None:
    # Prepare: rounds of 4 of 8 nodes (q = 1/2) calibrated for 3 expected survivors; two
    # unmasked rounds in the store (one with a survivor fewer, so less noise), as a resumed
    # coordinator finds them
    calibration = plan(DistributedDPSettings(**DDP), 4, 1000)
    assert calibration.expected == 3
    z3, z2 = calibration.delivered(3), calibration.delivered(2)
    stored = [
        {"event": "round", "round": r, "privacy": {"distributed": round_privacy(calibration, m,
         8, [], 1e-5)}} for r, m in ((1, 3), (2, 2))
    ]  # fmt: skip
    spent = rdp.epsilon([(z3, 0.5, 1), (z2, 0.5, 1)], 1e-5)
    next_one = rdp.epsilon([(z3, 0.5, 1), (z2, 0.5, 1), (z3, 0.5, 1)], 1e-5)
    cfg = ddp_config((spent + next_one) / 2)

    def privacy(events: list[dict]) -> RunPrivacy:
        return RunPrivacy.for_run(cfg, FedAvg(), (), elements=1000, events=lambda: events)

    # Execute
    why = privacy(stored).before_round(3, 4, 8)
    fresh = privacy(stored[:1]).before_round(2, 4, 8)

    # Assert: the third round would pass the budget (the stored rounds, as delivered, plus the
    # next at the expected survivors' noise); with one stored round the next one fits
    assert why is not None and "round 3 would bring the distributed epsilon" in why
    assert f"{next_one:.4f}" in why and "3 of 4 selected" in why
    assert fresh is None
