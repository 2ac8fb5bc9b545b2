"""One round of DP-SGD in the shared training loop (Opacus).

What a round does, and what the accountant assumes, match:

* **Poisson sampling.** Each step's batch is drawn by Opacus's
  ``UniformWithReplacementSampler``: every record joins the batch independently with probability
  ``q = batch_size / n`` (the batch size varies, ``batch_size`` is its expectation; a batch may be
  empty and still gets its noise). The RDP accountant counts each step as a Poisson-subsampled
  Gaussian mechanism at rate ``q``. ``steps`` (or ``epochs * ceil(n / batch_size)``) steps a round.
* **Per-example clipping and noise.** ``GradSampleModule`` computes per-example gradients of the
  trainable parameters; ``DPOptimizer`` clips each to ``max_grad_norm``, sums, adds Gaussian noise
  of standard deviation ``noise_multiplier * max_grad_norm`` and divides by the expected batch size.
* **Randomness.** The noise and the sampling draw from generators seeded from the operating
  system's entropy (``secrets``), not from the node's seed: a known seed would make the noise
  known. (torch's generator is a Mersenne Twister, not a cryptographic generator; Opacus's
  ``secure_mode`` needs ``torchcsprng``, which has no current release.) A DP round is therefore
  not reproducible bit for bit, unlike a plain one.

Not supported with DP-SGD (refused with a TaskError naming it): layers Opacus cannot compute
per-example gradients for or that mix examples (BatchNorm: use GroupNorm, see
``opacus.validators.ModuleValidator.fix``), FedProx (``mu > 0``), fp16/bf16 autocast (DP rounds
run in fp32).
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedhive.common.errors import TaskError
from fedhive.common.privacy.sgd import PrivacyLedger

if TYPE_CHECKING:  # pragma: no cover
    from fedhive.common.tasks.training import FitStats, TrainConfig, Trainer


# torch warns when Opacus's full backward hook sits on a layer whose input needs no gradient (the
# model's first layer): expected, the hook computes the per-example gradients of its parameters
FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed"


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from the OS's entropy (never from the node's seed)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def plan(n: int, cfg: TrainConfig) -> tuple[float, int]:
    """(sample rate, steps) of one DP round on ``n`` records: q = batch_size / n, and as many
    steps as the plain loop takes."""
    q = min(1.0, cfg.batch_size / n)
    steps = cfg.steps if cfg.steps is not None else cfg.epochs * math.ceil(n / cfg.batch_size)
    return q, steps


def check_model(model: nn.Module) -> None:
    """TaskError naming what keeps Opacus from training ``model`` with DP-SGD."""
    try:
        from opacus.validators import ModuleValidator
    except ImportError as exc:  # pragma: no cover - the dp extra is part of the dev install
        raise TaskError("DP-SGD needs Opacus: pip install 'fedhive[dp]'") from exc
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        listed = "; ".join(str(p) for p in problems[:3])
        raise TaskError(
            f"DP-SGD cannot train this model: {listed} (Opacus needs per-example gradients: "
            "replace BatchNorm by GroupNorm, e.g. opacus.validators.ModuleValidator.fix(model))"
        )


def fit_private(
    trainer: Trainer,
    model: nn.Module,
    data: Sequence[torch.Tensor],
    cfg: TrainConfig,
    ledger: PrivacyLedger,
) -> FitStats:
    """One DP-SGD round; the ledger is checked before any training and spent after it."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from fedhive.common.tasks.training import FitStats

    settings = ledger.settings
    if settings is None:  # pragma: no cover - the caller checks
        raise TaskError("DP-SGD is not on this round")
    if cfg.mu > 0:
        raise TaskError(
            "DP-SGD with FedProx (mu > 0) is not supported: the proximal term's gradient would "
            "bypass the per-example clipping; set mu = 0"
        )
    model.train()
    check_model(model)
    n = len(data[-1])
    q, steps = plan(n, cfg)
    sigma = ledger.noise_multiplier(q, steps)
    entry = (sigma, q, steps)
    ledger.check(entry)  # before any training: a round past the budget never starts
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = trainable[0].device if trainable else trainer.device
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    opt = DPOptimizer(
        trainer.optimizer(model, cfg),
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=max(1, round(q * n)),
        loss_reduction="mean",
        generator=secure_generator(device),
    )
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=q, generator=secure_generator(), steps=steps
    )
    loss_sum = 0.0
    correct = seen = done = 0
    try:
        for idx in sampler:
            opt.zero_grad(set_to_none=True)
            if len(idx) == 0:  # an empty Poisson batch: the step is noise alone
                for p in trainable:
                    empty = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                    setattr(p, "grad_sample", empty)  # noqa: B010 - Opacus's attribute
            else:
                index = torch.as_tensor(idx, dtype=torch.long)
                *inputs, yb = trainer.to_device([t[index] for t in data])
                logits = trainer.forward(gsm, inputs)
                loss = nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
                with warnings.catch_warnings():  # Opacus's hooks on a first layer
                    warnings.filterwarnings("ignore", message=FULL_HOOK_WARNING)
                    loss.backward()
                loss_sum += float(loss.detach())
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
            opt.step()
            done += 1
    finally:
        opt.zero_grad(set_to_none=True)
        gsm.cleanup()
        for p in model.parameters():
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
    if not all(bool(torch.isfinite(p).all()) for p in trainable):
        raise TaskError("DP-SGD training diverged (non-finite weights); lower the learning rate")
    ledger.spend(entry)
    metrics = {
        "loss": loss_sum / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "dp_noise_multiplier": sigma,
        "dp_sample_rate": q,
    }
    if not math.isfinite(metrics["loss"]):
        raise TaskError("training diverged (loss is not finite); lower the learning rate")
    return FitStats(examples=seen, steps=done, metrics=metrics)
