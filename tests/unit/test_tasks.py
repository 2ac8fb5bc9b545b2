"""The built-in learning tasks with tiny models: images (folder, npz, custom factory), text
(tiny random encoder, LoRA vs full exchange), digits, and what travels (``exchanged_state``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fedhive.common.api.task import Task, TaskContext, exchanged_state, load_task
from fedhive.common.data.datasets import write_table
from fedhive.common.data.partition import write_npz
from fedhive.common.errors import TaskError
from fedhive.common.tasks import images, text, triage_data

IMAGES = "fedhive.common.tasks.images:make_task"
TEXT = "fedhive.common.tasks.text:make_task"


def linear_factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


def write_stripes(folder: Path, per_class: int = 8) -> None:
    """Two classes of 8x8 PNGs: horizontal vs vertical stripes (learnable)."""
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.zeros((8, 8), dtype=np.uint8)
            idx = [slice(None), slice(None)]
            idx[axis] = slice(i % 2, None, 2)
            arr[tuple(idx)] = 255
            Image.fromarray(arr).save(folder / name / f"{i}.png")


def test_image_folder_task_trains_and_evaluates(tmp_path: Path) -> None:
    # Prepare
    write_stripes(tmp_path / "node")
    args = {"image_size": 8, "classes": "horizontal,vertical", "width": 4, "depth": 1}
    task = load_task(IMAGES, TaskContext(role="node", data_dir=tmp_path / "node", args=args))
    model = task.build_model()

    # Execute
    fit = task.fit(model, {"epochs": 2, "batch_size": 4, "round": 1})
    ev = task.evaluate(model, {})

    # Assert: 16 images, 20% kept for validation; metrics are reported
    assert task.num_examples() == 13 and fit.num_examples == 13
    assert ev is not None and ev.num_examples == 3
    assert {"loss", "accuracy", "macro_f1"} <= set(ev.metrics)
    assert fit.metrics["steps"] == 8


def test_image_npz_channels_last_uint8_is_converted(tmp_path: Path) -> None:
    # Prepare: 10 RGB 12x12 images in a test.npz for the coordinator
    x = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    write_npz(tmp_path / "test.npz", x, np.arange(10) % 3)
    args = {"image_size": 16, "channels": 3, "num_classes": 3}

    # Execute
    task = images.make_task(TaskContext(role="server", data_dir=tmp_path, args=args))

    # Assert: N x C x size x size in [0, 1]
    assert task.val is not None
    assert task.val[0].shape == (10, 3, 16, 16)
    assert float(task.val[0].min()) >= 0.0 and float(task.val[0].max()) <= 1.0


def test_image_labels_out_of_range_are_refused(tmp_path: Path) -> None:
    write_npz(tmp_path / "train.npz", np.zeros((4, 8, 8), np.float32), np.array([0, 1, 2, 9]))
    with pytest.raises(TaskError, match=r"labels must be in 0\.\.2"):
        images.make_task(TaskContext(role="node", data_dir=tmp_path, args={"num_classes": 3}))


def test_any_module_factory_replaces_the_cnn() -> None:
    # Prepare
    args = {"model": "tests.unit.test_tasks:linear_factory", "image_size": 6, "num_classes": 4}

    # Execute
    model = images.make_task(TaskContext(role="server", args=args)).build_model()

    # Assert
    assert isinstance(model[1], nn.Linear) and model[1].weight.shape == (4, 36)


def test_training_config_errors_name_the_field(tmp_path: Path) -> None:
    # Prepare
    write_npz(tmp_path / "train.npz", np.zeros((20, 8, 8), np.float32), np.arange(20) % 10)
    task = load_task(
        "fedhive.common.tasks.digits:make_task", TaskContext(role="node", data_dir=tmp_path)
    )

    # Execute / Assert
    with pytest.raises(TaskError, match="epoch: unknown training setting"):
        task.fit(task.build_model(), {"epoch": 1})


class Picky:
    """A task whose exchanged() picks one tensor."""

    def exchanged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {"w": model.weight}


def test_exchanged_state_default_and_task_choice() -> None:
    # Prepare
    model = nn.Linear(3, 2)

    # Execute
    default = exchanged_state(model)
    chosen = exchanged_state(model, Picky())
    with torch.no_grad():
        chosen["w"].fill_(7.0)

    # Assert: the default is the state dict; a chosen tensor is a live view of the model
    assert list(default) == ["weight", "bias"]
    assert list(chosen) == ["w"] and not chosen["w"].requires_grad
    assert float(model.weight.detach().min()) == 7.0
    with pytest.raises(TaskError, match="non-empty dict"):
        exchanged_state(model, type("Empty", (), {"exchanged": lambda self, m: {}})())


def text_node(tmp_path: Path, **args: object) -> text.TextTask:
    rows = triage_data.generate(40, seed=1)
    write_table(tmp_path / "train.jsonl", rows)
    ctx = TaskContext(role="node", data_dir=tmp_path, args={"tiny": True, **args})
    return text.make_task(ctx)


def test_lora_sends_only_adapters_and_head(tmp_path: Path) -> None:
    # Prepare
    lora_task = text_node(tmp_path)
    full_task = text_node(tmp_path, lora=False)

    # Execute
    lora_model, full_model = lora_task.build_model(), full_task.build_model()
    lora_state = exchanged_state(lora_model, lora_task)
    full_state = exchanged_state(full_model, full_task)

    # Assert
    assert lora_state and all(("lora_" in n or "classifier" in n) for n in lora_state)
    assert any("lora_A" in n for n in lora_state) and any("classifier" in n for n in lora_state)
    assert len(full_state) == len(list(full_model.parameters()))
    lora_bytes = sum(t.numel() * t.element_size() for t in lora_state.values())
    full_bytes = sum(t.numel() * t.element_size() for t in full_state.values())
    assert lora_bytes < 0.02 * full_bytes


def test_text_task_fit_changes_only_what_travels(tmp_path: Path) -> None:
    # Prepare
    task = text_node(tmp_path)
    model = task.build_model()
    state = exchanged_state(model, task)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    sent = {n: t.clone() for n, t in state.items()}

    # Execute
    fit = task.fit(model, {"steps": 2, "batch_size": 8, "round": 1})
    ev = task.evaluate(model, {})

    # Assert
    assert fit.num_examples == 32 and fit.metrics["steps"] == 2
    assert ev is not None and ev.num_examples == 8
    assert any(not torch.equal(sent[n], state[n]) for n in state)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_text_task_refuses_unknown_labels(tmp_path: Path) -> None:
    write_table(tmp_path / "train.csv", [{"text": "hello", "label": "dermatology"}])
    with pytest.raises(TaskError, match="'dermatology' is not one of"):
        text.make_task(TaskContext(role="node", data_dir=tmp_path, args={"tiny": True}))


def test_triage_generator_is_seeded_noisy_and_covers_every_class() -> None:
    # Execute
    rows = triage_data.generate(500, seed=3)
    again = triage_data.generate(500, seed=3)
    clean = triage_data.generate(500, seed=3, label_noise=0.0)

    # Assert
    assert rows == again
    assert set(Counter(r["label"] for r in rows)) == set(triage_data.LABELS)
    flipped = sum(a["label"] != b["label"] for a, b in zip(rows, clean, strict=True))
    assert 0 < flipped < 0.15 * len(rows)
    assert len({r["text"] for r in rows}) > 300


def node_task(kind: str, folder: Path) -> Task:
    """A node of one built-in task on a little data (text: a tiny encoder with dropout)."""
    from fedhive.common.tasks import digits

    x, y = digits.load_digits_arrays()
    if kind == "text":
        write_table(folder / "train.jsonl", triage_data.generate(40, seed=1))
        ctx = TaskContext(role="node", data_dir=folder, seed=3, args={"tiny": True})
        return load_task(TEXT, ctx)
    write_npz(folder / "train.npz", x[:80], y[:80])
    args = {"image_size": 8, "width": 4, "depth": 1} if kind == "images" else {}
    path = IMAGES if kind == "images" else "fedhive.common.tasks.digits:make_task"
    return load_task(path, TaskContext(role="node", data_dir=folder, seed=3, args=args))


@pytest.mark.parametrize("kind", ["digits", "images", "text"])
def test_a_round_trained_again_gives_the_same_update(tmp_path: Path, kind: str) -> None:
    # Prepare: a node, the global model it receives for round 2, and what it sends back
    task = node_task(kind, tmp_path)
    model = task.build_model()
    state = exchanged_state(model, task)
    task.fit(model, {"steps": 3, "round": 1})  # round 1 moves the optimiser and random state
    received = {n: t.clone() for n, t in state.items()}
    config = {"steps": 4, "batch_size": 8, "round": 2}
    task.fit(model, config)
    first = {n: t.clone() for n, t in state.items()}

    # Execute: the same round again from the same model (its upload was lost), by this node after
    # other work, and by the node restarted (a new process: a new task and model)
    with torch.no_grad():
        for n, t in state.items():
            t.copy_(received[n])
    torch.rand(7)  # anything else drawing from torch's global random state meanwhile
    task.fit(model, config)
    again = {n: t.clone() for n, t in state.items()}
    restarted = node_task(kind, tmp_path)
    fresh_model = restarted.build_model()
    fresh_state = exchanged_state(fresh_model, restarted)
    with torch.no_grad():
        for n, t in fresh_state.items():
            t.copy_(received[n])
    restarted.fit(fresh_model, config)

    # Assert: bit for bit the same update, and round 2 did train
    assert any(not torch.equal(first[n], received[n]) for n in first)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(torch.equal(first[n], fresh_state[n]) for n in first)
