"""The shared training loop: config, optimiser state per round, FedProx, metrics, CUDA/AMP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn

from fedhive.common.errors import TaskError
from fedhive.common.tasks.training import (
    TrainConfig,
    Trainer,
    binary_auroc,
    classification_metrics,
    parse_train_config,
)


def blobs(n: int = 96, classes: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.eye(classes, 4) * 4
    x = centers[y] + torch.randn(n, 4, generator=g)
    return [x, y]


def tiny_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, classes))


def test_unknown_training_key_is_refused_naming_it() -> None:
    # Prepare
    config = {"epochs": 1, "learning_rate": 0.1}

    # Execute / Assert
    with pytest.raises(TaskError, match="learning_rate: unknown training setting"):
        parse_train_config(config)


def test_bad_value_is_refused_naming_the_field() -> None:
    with pytest.raises(TaskError, match="optimizer"):
        parse_train_config({"optimizer": "rmsprop"})
    with pytest.raises(TaskError, match="batch_size"):
        parse_train_config({"batch_size": 0})


def test_train_config_is_frozen() -> None:
    cfg = parse_train_config({"lr": 0.1, "round": 3, "evaluate": True})
    with pytest.raises(ValueError, match="frozen"):
        cfg.lr = 0.2  # type: ignore[misc]


def test_steps_override_epochs_and_count_batches() -> None:
    # Prepare: 96 examples, batch 32 -> 3 batches per epoch
    data = blobs()
    trainer = Trainer("cpu")

    # Execute
    by_epochs = trainer.fit(tiny_model(), data, TrainConfig(epochs=2, batch_size=32))
    by_steps = Trainer("cpu").fit(tiny_model(), data, TrainConfig(steps=5, batch_size=32))

    # Assert
    assert by_epochs.steps == 6 and by_epochs.examples == 192
    assert by_steps.steps == 5 and by_steps.examples == 160


def test_training_learns_separable_data() -> None:
    # Prepare
    data = blobs(n=192)
    model = tiny_model()
    trainer = Trainer("cpu")
    before = trainer.evaluate(model, data)["accuracy"]

    # Execute
    trainer.fit(model, data, TrainConfig(epochs=5, batch_size=16, lr=0.1))
    after = trainer.evaluate(model, data)

    # Assert
    assert after["accuracy"] > max(0.9, before)
    assert set(after) == {"loss", "accuracy", "macro_f1"}


def test_each_round_gets_the_optimiser_and_hyper_parameters_it_asks_for() -> None:
    # Prepare
    model = tiny_model()

    # Execute
    adam = Trainer.optimizer(model, TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.1))
    sgd = Trainer.optimizer(model, TrainConfig(optimizer="sgd", lr=0.001, momentum=0.5))

    # Assert
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.1
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.001
    assert sgd.param_groups[0]["momentum"] == 0.5


def test_optimiser_state_is_fresh_each_round() -> None:
    # Prepare: the same start, trained for round 2 by a new node and by one that trained round 1
    data = blobs()
    start = tiny_model().state_dict()
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, lr=0.05, round=2)
    trained = tiny_model()
    trainer = Trainer("cpu")
    trainer.fit(trained, data, TrainConfig(optimizer="sgd", momentum=0.9, lr=0.05, round=1))

    # Execute
    trained.load_state_dict(start)
    trainer.fit(trained, data, cfg)
    new = tiny_model()
    Trainer("cpu").fit(new, data, cfg)

    # Assert: round 1's momentum did not leak into round 2
    pairs = zip(trained.parameters(), new.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_fedprox_term_keeps_weights_near_the_global_model() -> None:
    # Prepare: the same start, trained with mu=0 and with a strong proximal term
    data = blobs()
    start = [p.detach().clone() for p in tiny_model().parameters()]

    def drift(mu: float) -> float:
        model = tiny_model()
        Trainer("cpu").fit(model, data, TrainConfig(epochs=3, lr=0.1, mu=mu))
        params = [p.detach() for p in model.parameters()]
        return sum(float((p - s).pow(2).sum()) for p, s in zip(params, start, strict=True))

    # Execute
    free, prox = drift(0.0), drift(10.0)

    # Assert
    assert prox < 0.5 * free


def test_macro_f1_and_auroc_match_scikit_learn() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, 200))
    logits = torch.from_numpy(rng.normal(size=(200, 4))).float()
    logits[torch.arange(200), labels] += 0.8
    bin_labels = torch.from_numpy(rng.integers(0, 2, 150))
    scores = np.round(rng.normal(size=150) + bin_labels.numpy(), 1)  # with ties
    bin_logits = torch.stack([torch.zeros(150), torch.from_numpy(scores).float()], 1)

    # Execute
    multi = classification_metrics(logits, labels, loss=1.0)
    binary = classification_metrics(bin_logits, bin_labels, loss=1.0)

    # Assert
    expected_f1 = f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro")
    assert multi["macro_f1"] == pytest.approx(expected_f1)
    assert "auroc" not in multi
    assert binary["auroc"] == pytest.approx(roc_auc_score(bin_labels.numpy(), scores), abs=1e-6)
    assert binary_auroc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def test_divergence_is_reported() -> None:
    # Prepare: a huge learning rate blows the loss up
    data = blobs()
    data[0] = data[0] * 1e6

    # Execute / Assert
    with pytest.raises(TaskError, match="not finite"):
        Trainer("cpu").fit(tiny_model(), data, TrainConfig(epochs=3, lr=1e6, momentum=0.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_training_step() -> None:
    # Prepare
    trainer = Trainer("cuda")
    model = tiny_model().cuda()

    # Execute
    stats = trainer.fit(model, blobs(n=256), TrainConfig(epochs=3, lr=0.1, batch_size=32))

    # Assert: bf16 where supported, else fp16 with a grad scaler; weights stay float32
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.amp_dtype == expected
    assert (trainer.scaler is not None) == (expected == torch.float16)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert stats.metrics["accuracy"] > 0.5
