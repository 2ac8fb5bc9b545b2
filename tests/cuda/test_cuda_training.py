"""The training loop on a CUDA GPU: AMP in bf16 and in fp16 with the grad scaler, pinned host
batches, the same result as the CPU with AMP off, evaluation, and the LoRA text task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedhive.common.api.task import TaskContext, exchanged_state
from fedhive.common.data.datasets import write_table
from fedhive.common.tasks import text, triage_data
from fedhive.common.tasks.training import TrainConfig, Trainer
from tests.unit.test_training import blobs


def tiny_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, classes))


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_amp_trains_with_float32_weights(amp_dtype: str) -> None:
    # Prepare
    trainer = Trainer("cuda")
    model = tiny_model().cuda()
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=32, amp_dtype=amp_dtype)  # type: ignore[arg-type]

    # Execute
    stats = trainer.fit(model, blobs(n=256), cfg)
    ev = trainer.evaluate(model, blobs(n=256, seed=1))

    # Assert: autocast in the asked dtype; a grad scaler exactly for fp16; weights stay fp32
    assert trainer.amp_dtype == getattr(torch, amp_dtype)
    assert (trainer.scaler is not None) == (amp_dtype == "float16")
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert stats.metrics["accuracy"] > 0.8 and ev["accuracy"] > 0.8


def test_fp16_grad_scaler_skips_an_overflowing_step() -> None:
    # Prepare: fp16 autocast; a large input: a finite loss whose scaled gradients overflow fp16
    trainer = Trainer("cuda")
    model = tiny_model().cuda()
    x, y = blobs(n=32)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(steps=1, lr=0.1, batch_size=32, momentum=0.0, amp_dtype="float16")

    # Execute
    trainer.fit(model, [x * 300, y], cfg)

    # Assert: the scaler saw inf gradients, skipped the step and lowered its scale
    assert trainer.scaler is not None and trainer.scaler.get_scale() < 65536.0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_batches_are_pinned_and_copied_to_the_gpu() -> None:
    # Prepare
    trainer = Trainer("cuda")
    batch = blobs(n=8)

    # Execute
    moved = trainer.to_device(batch)
    torch.cuda.synchronize()

    # Assert
    assert all(t.is_cuda for t in moved)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(batch, moved, strict=True))


def test_gpu_without_amp_matches_the_cpu() -> None:
    # Prepare: the same model, data, batch order and optimiser on both devices, AMP off
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16, amp=False, round=1)
    cpu_model, gpu_model = tiny_model(), tiny_model().cuda()

    # Execute
    Trainer("cpu").fit(cpu_model, blobs(n=256), cfg, seed=3)
    Trainer("cuda").fit(gpu_model, blobs(n=256), cfg, seed=3)

    # Assert: float32 arithmetic on two devices: equal up to rounding
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-5)


def test_lora_text_task_trains_on_the_gpu(tmp_path: Path) -> None:
    # Prepare: the tiny encoder (MiniLM's tokenizer), LoRA, on CUDA
    write_table(tmp_path / "train.jsonl", triage_data.generate(64, seed=1))
    ctx = TaskContext(role="node", data_dir=tmp_path, device="cuda", args={"tiny": True})
    task = text.make_task(ctx)
    model = task.build_model().to("cuda")
    state = exchanged_state(model, task)
    sent = {n: t.detach().clone() for n, t in state.items()}

    # Execute
    fit = task.fit(model, {"steps": 4, "batch_size": 8, "round": 1})
    ev = task.evaluate(model, {})

    # Assert: what travels lives on the GPU, changed, and stayed float32
    assert fit.metrics["steps"] == 4 and ev is not None and ev.num_examples > 0
    assert all(t.is_cuda and t.dtype == torch.float32 for t in state.values())
    assert any(not torch.equal(sent[n], state[n]) for n in state)
