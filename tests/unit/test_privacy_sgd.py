"""DP-SGD at each site: the accountant against Google's dp-accounting, per-example clipping,
Poisson sampling as the accountant assumes it, the node's ledger and budget, the settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import dp_accounting
import pytest
import torch
from torch import nn

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError, PrivacyBudgetExceeded, TaskError
from fedhive.common.privacy import rdp
from fedhive.common.privacy.sgd import PrivacyLedger, SgdRound, task_config
from fedhive.common.tasks.training import TrainConfig, Trainer

DELTA = 1e-5


def reference_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    """Google's dp-accounting: Poisson-subsampled Gaussian, self-composed, RDP at our orders."""
    accountant = dp_accounting.rdp.RdpAccountant(list(rdp.ORDERS))
    for sigma, q, steps in entries:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [(1.0, 0.01, 1000), (1.1, 0.05, 200), (0.8, 0.02, 500), (2.0, 0.1, 50), (4.0, 1.0, 10)],
)
def test_accountant_matches_dp_accounting(sigma: float, q: float, steps: int) -> None:
    # Execute
    ours = rdp.epsilon([(sigma, q, steps)], DELTA)
    theirs = reference_epsilon([(sigma, q, steps)], DELTA)

    # Assert: the same RDP curve; the conversions to (epsilon, delta) agree within 1%
    assert ours == pytest.approx(theirs, rel=0.01)


def test_accountant_composes_rounds_of_different_noise_like_dp_accounting() -> None:
    entries = [(1.0, 0.02, 100), (1.5, 0.05, 40), (0.9, 0.02, 100)]
    assert rdp.epsilon(entries, DELTA) == pytest.approx(reference_epsilon(entries, DELTA), rel=0.01)
    assert rdp.epsilon([], DELTA) == 0.0


def test_calibrated_noise_reaches_the_target_epsilon_and_no_more() -> None:
    # Execute
    sigma = rdp.noise_for_epsilon(3.0, DELTA, 0.02, 500)

    # Assert: at most the target, and 1% less noise would overshoot it
    assert rdp.epsilon([(sigma, 0.02, 500)], DELTA) <= 3.0
    assert rdp.epsilon([(sigma * 0.99, 0.02, 500)], DELTA) > 3.0
    assert reference_epsilon([(sigma, 0.02, 500)], DELTA) == pytest.approx(3.0, rel=0.02)


def test_an_unreachable_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no noise multiplier"):
        rdp.noise_for_epsilon(1e-6, 1e-12, 1.0, 100_000)


# ------------------------------------------------------------------ the training loop


def blobs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.eye(3, 4)[y] * 4 + torch.randn(n, 4, generator=g)
    return [x, y]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def armed(
    noise: float = 1.0,
    clip: float = 1.0,
    max_epsilon: float | None = None,
    path: Path | None = None,
) -> PrivacyLedger:
    ledger = PrivacyLedger(max_epsilon=max_epsilon, path=path)
    ledger.begin_run("run-a")
    ledger.arm(1, SgdRound(noise_multiplier=noise, max_grad_norm=clip, delta=DELTA, rounds=1))
    return ledger


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_one_example_moves_the_update_by_at_most_the_clipping_bound() -> None:
    # Prepare: two data sets that differ in one record, an outlier with a huge gradient; every
    # record in the one step (q = 1), SGD without momentum, noise negligible
    clip, lr, n = 0.5, 1.0, 32
    data = blobs(n)
    neighbour = [data[0].clone(), data[1].clone()]
    neighbour[0][0] = 1e4
    cfg = TrainConfig(steps=1, batch_size=n, lr=lr, momentum=0.0)
    start = tiny_model()

    # Execute
    models = [copy.deepcopy(start), copy.deepcopy(start)]
    for model, d in zip(models, (data, neighbour), strict=True):
        Trainer("cpu").fit(model, d, cfg, privacy=armed(noise=1e-9, clip=clip))
    plain = copy.deepcopy(start)
    Trainer("cpu").fit(plain, neighbour, cfg)

    # Assert: the record's influence is at most lr * 2C / B (each clipped gradient <= C), where
    # plain SGD lets it move the model by orders of magnitude more
    gap = float((flat(models[0]) - flat(models[1])).norm())
    assert gap <= lr * 2 * clip / n * 1.001
    assert float((flat(plain) - flat(start)).norm()) > 100 * lr * 2 * clip / n


def test_batches_are_poisson_samples_at_the_rate_the_accountant_counts() -> None:
    # Prepare: record each batch's size through the task's forward
    sizes: list[int] = []

    def forward(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        sizes.append(len(inputs[0]))
        return model(*inputs)

    n, batch, steps = 200, 20, 60
    ledger = armed()
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=0.05)

    # Execute
    stats = Trainer("cpu", forward=forward).fit(tiny_model(), blobs(n), cfg, privacy=ledger)

    # Assert: sizes vary around the expected batch (q = batch / n; the mean of 60 Binomial(200,
    # 0.1) draws lies within 20 +- 3.4, five standard deviations); the ledger counts that rate
    assert stats.steps == steps
    assert len(set(sizes)) > 3
    assert abs(sum(sizes) / len(sizes) - batch) < 3.4
    assert ledger.history == [(1.0, batch / n, steps)]


def test_an_empty_poisson_batch_is_a_noise_only_step() -> None:
    # Prepare: 5 records at q = 0.2: a batch is empty with probability 0.33 (30 steps: all
    # non-empty with probability 6e-6)
    calls: list[int] = []

    def forward(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        calls.append(len(inputs[0]))
        return model(*inputs)

    model = tiny_model()
    before = flat(model)

    # Execute
    stats = Trainer("cpu", forward=forward).fit(
        model, blobs(5), TrainConfig(steps=30, batch_size=1), privacy=armed()
    )

    # Assert: every step ran (the empty ones without a forward pass), the model moved, finite
    assert stats.steps == 30 and len(calls) < 30
    after = flat(model)
    assert bool(torch.isfinite(after).all()) and not torch.equal(before, after)


def test_a_round_past_the_nodes_budget_is_refused_before_training(tmp_path: Path) -> None:
    # Prepare: one round (10 steps at q = 0.1) costs 3.44 at delta 1e-5, two 4.22; the budget is 4
    ledger = armed(max_epsilon=4.0, path=tmp_path / "ledger.json")
    model, data = tiny_model(), blobs(100)
    cfg = TrainConfig(epochs=1, batch_size=10)
    Trainer("cpu").fit(model, data, cfg, privacy=ledger)
    before = flat(model)

    # Execute
    ledger.arm(2, ledger.settings)
    with pytest.raises(PrivacyBudgetExceeded, match=r"past its max_epsilon 4\.0"):
        Trainer("cpu").fit(model, data, cfg, privacy=ledger)

    # Assert: nothing trained, nothing spent
    assert torch.equal(flat(model), before)
    assert len(ledger.history) == 1


def test_the_ledger_survives_a_restart_within_the_run(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state" / "dp-ledger.json"
    ledger = armed(path=path)
    Trainer("cpu").fit(tiny_model(), blobs(64), TrainConfig(steps=5, batch_size=8), privacy=ledger)
    spent = ledger.epsilon(DELTA)

    # Execute: a new process's ledger for the same run, and for another run
    again, other = PrivacyLedger(path=path), PrivacyLedger(path=path)
    again.begin_run("run-a")
    other.begin_run("run-b")

    # Assert
    assert spent > 0
    assert again.epsilon(DELTA) == spent
    assert other.epsilon(DELTA) == 0.0


def test_a_damaged_ledger_stops_the_node_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dp-ledger.json"
    path.write_text(json.dumps({"version": 1, "runs": {"run-a": [{"noise_multiplier": -1}]}}))
    with pytest.raises(TaskError, match="cannot read the DP-SGD ledger"):
        PrivacyLedger(path=path).begin_run("run-a")


def test_models_opacus_cannot_train_privately_are_refused_naming_why() -> None:
    # Prepare
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))

    # Execute / Assert
    with pytest.raises(TaskError, match="BatchNorm"):
        Trainer("cpu").fit(model, blobs(32), TrainConfig(steps=1), privacy=armed())
    with pytest.raises(TaskError, match="FedProx"):
        Trainer("cpu").fit(tiny_model(), blobs(32), TrainConfig(steps=1, mu=0.1), privacy=armed())


def test_a_target_epsilon_is_reached_after_the_runs_rounds() -> None:
    # Prepare: target 2 over 3 rounds of 10 steps at q = 0.1
    ledger = PrivacyLedger()
    ledger.begin_run("run-a")
    settings = SgdRound(target_epsilon=2.0, max_grad_norm=1.0, delta=DELTA, rounds=3)
    cfg = TrainConfig(steps=10, batch_size=10)

    # Execute
    for r in (1, 2, 3):
        ledger.arm(r, settings)
        Trainer("cpu").fit(tiny_model(), blobs(100), cfg, privacy=ledger)

    # Assert
    assert 1.9 < ledger.epsilon(DELTA) <= 2.0


# ------------------------------------------------------------------ settings


def test_dp_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        ServerConfig(insecure=True, dp={"sgd": {"noise_multiplier": 1, "target_epsilon": 3}})
    with pytest.raises(ValueError, match=r"dp\.sgd\.clip"):
        ServerConfig(insecure=True, dp={"sgd": {"noise_multiplier": 1, "clip": 1}})
    with pytest.raises(ValueError, match=r"dp\.delta"):
        ServerConfig(insecure=True, dp={"delta": 2, "sgd": {"noise_multiplier": 1}})
    with pytest.raises(ValueError, match=r"train\.mu = 0\.1 \(FedProx\)"):
        ServerConfig(insecure=True, train={"mu": 0.1}, dp={"sgd": {"noise_multiplier": 1}})


def test_settings_travel_and_come_back_validated() -> None:
    # Prepare
    config = ServerConfig(insecure=True, rounds=7, dp={"sgd": {"target_epsilon": 3}})

    # Execute
    keys = task_config(config.dp, config.rounds)
    back = SgdRound.from_config({"lr": 0.1, **keys})

    # Assert
    assert back == SgdRound(target_epsilon=3, max_grad_norm=1.0, delta=1e-5, rounds=7)
    assert SgdRound.from_config({"lr": 0.1}) is None
    with pytest.raises(TaskError, match="dp_sgd_max_grad_norm"):
        SgdRound.from_config({**keys, "dp_sgd_max_grad_norm": float("nan")})


def test_the_lora_text_task_trains_only_its_adapters_with_dp_sgd(tmp_path: Path) -> None:
    # Prepare: the tiny random encoder with LoRA, the node's ledger in its context
    from fedhive.common.api.task import TaskContext, exchanged_state
    from fedhive.common.tasks import text

    _, nodes = text.prepare_simulation(tmp_path, 1, None, 0, examples=200)
    ledger = PrivacyLedger()
    ledger.begin_run("run-a")
    task = text.make_task(
        TaskContext(role="node", data_dir=nodes[0], args={"tiny": True}, privacy=ledger)
    )
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ledger.arm(1, SgdRound(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, rounds=1))

    # Execute
    result = task.fit(model, {"round": 1, "steps": 2})

    # Assert: a DP round (spent, reported), and only the exchanged tensors (adapters, head) moved
    assert ledger.history == [(1.0, result.metrics["dp_sample_rate"], 2)]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and changed <= set(exchanged_state(model, task))


def test_the_runs_budget_travels_and_each_sites_ledger_enforces_it() -> None:
    # Prepare: the run's max_epsilon 4 (a round of 10 steps at q = 0.1 costs 3.44, two 4.22);
    # the site set no budget of its own
    config = ServerConfig(insecure=True, dp={"max_epsilon": 4, "sgd": {"noise_multiplier": 1}})
    settings = SgdRound.from_config(task_config(config.dp, config.rounds))
    assert settings is not None and settings.max_epsilon == 4
    ledger = PrivacyLedger()
    ledger.begin_run("run-a")
    model, data, cfg = tiny_model(), blobs(100), TrainConfig(epochs=1, batch_size=10)
    ledger.arm(1, settings)
    Trainer("cpu").fit(model, data, cfg, privacy=ledger)

    # Execute / Assert: the second round would pass the run's budget: refused before training
    ledger.arm(2, settings)
    with pytest.raises(PrivacyBudgetExceeded, match=r"past the run's \[dp\] max_epsilon 4"):
        Trainer("cpu").fit(model, data, cfg, privacy=ledger)
    assert len(ledger.history) == 1


def test_a_target_epsilon_above_the_runs_budget_is_refused_at_config_time() -> None:
    with pytest.raises(ValueError, match=r"target_epsilon = 8 is above the run's \[dp\] max_"):
        ServerConfig(insecure=True, dp={"max_epsilon": 3, "sgd": {"target_epsilon": 8}})
    ServerConfig(insecure=True, dp={"max_epsilon": 8, "sgd": {"target_epsilon": 8}})
