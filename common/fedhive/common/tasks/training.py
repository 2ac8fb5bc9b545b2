"""The shared training loop used by the built-in tasks (digits, images, text).

* :class:`TrainConfig`: the coordinator's per-round ``[train]`` table, validated on the node
  (pydantic, frozen, ``extra="forbid"``): a wrong or misspelled key is a
  :class:`~fedhive.common.errors.TaskError` naming the field.
* :class:`Trainer`: one per node. Each round starts from fresh optimiser state (what FedAvg
  assumes) and a random state derived from (node seed, round): data order, dropout and optimiser
  state depend only on the received model, the node's seed and the round number, so a round trained
  again (its upload lost to a coordinator crash, or the node restarted) gives the same update.
  CUDA when the task's device says so, automatic mixed precision there (bf16 where supported, else
  fp16 with a grad scaler), pinned host batches copied with ``non_blocking=True``; optional FedProx
  proximal term ``mu/2 * ||w - w_global||^2`` over the trainable parameters.
* :func:`classification_metrics`: loss, accuracy, macro-F1 and, for two classes, AUROC.

A batch is a list of tensors sharing their first dimension; the last one holds the labels. The
task gives a ``forward(model, inputs) -> logits`` when ``model(*inputs)`` is not the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from fedhive.common.config import validation_problems
from fedhive.common.errors import TaskError
from fedhive.common.privacy.sgd import PrivacyLedger

Forward = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


class TrainConfig(BaseModel):
    """One round's training settings (what the coordinator's ``[train]`` table may hold)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=1, ge=1)
    steps: int | None = Field(default=None, ge=1, description="batches; overrides epochs")
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=0.05, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(default=0.0, ge=0)
    mu: float = Field(default=0.0, ge=0, description="FedProx proximal term; 0 = FedAvg")
    max_grad_norm: float | None = Field(default=None, gt=0)
    amp: bool = True
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bf16 where the GPU supports it, else fp16"
    )
    # set by the coordinator every round
    round: int = Field(default=0, ge=0)
    evaluate: bool = False


def parse_train_config(
    config: Mapping[str, Any], model: type[TrainConfig] = TrainConfig
) -> TrainConfig:
    """Validate the coordinator's per-round config; the error names every bad field."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = validation_problems(exc, "unknown training setting")
        raise TaskError(
            "invalid training config from the coordinator: " + "; ".join(problems)
        ) from None


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, loss: float
) -> dict[str, float]:
    """Loss, accuracy, macro-F1 over the classes present in labels or predictions, AUROC (2 cl.)."""
    labels = labels.cpu()
    logits = logits.float().cpu()
    pred = logits.argmax(1)
    k = logits.shape[1]
    conf = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k).double()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    out = {
        "loss": float(loss),
        "accuracy": float(tp.sum() / max(len(labels), 1)),
        "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
    }
    if k == 2:
        auc = binary_auroc(torch.softmax(logits, 1)[:, 1].numpy(), labels.numpy())
        if auc is not None:
            out["auroc"] = auc
    return out


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with tied scores averaged; None when only one class is present."""
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class FitStats:
    examples: int
    steps: int
    metrics: dict[str, float]


def default_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = model(*inputs)
    return out.logits if hasattr(out, "logits") else out


RNG_SALT = 0x6665_6468  # keeps the torch state's stream apart from the data order's


def round_seeds(seed: int, round_: int) -> tuple[int, int]:
    """(data order, torch random state) seeds of one node's round: a function of both alone."""
    data = seed * 1_000_003 + round_
    words = np.random.SeedSequence([seed % 2**64, round_, RNG_SALT]).generate_state(1, np.uint64)
    return data, int(words[0])


class Trainer:
    """Trains and evaluates one model on in-memory tensors; lives as long as the node.

    A round (:meth:`fit`) depends only on the model it starts from, the node's seed and
    ``cfg.round``: the batches are drawn from a generator seeded by (seed, round); dropout and any
    other use of torch's global random state run under a state seeded the same way (the caller's
    state is restored afterwards); the optimiser (and fp16 grad scaler) start fresh, as FedAvg
    assumes: no momentum or Adam moments carry over from the node's earlier rounds, lost ones
    included. So a round trained twice gives the same update, bit for bit on the CPU.
    """

    def __init__(self, device: str | torch.device = "cpu", forward: Forward = default_forward):
        self.device = torch.device(device)
        self.forward = forward
        self.cuda = self.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if self.cuda:
            self.amp_dtype = self.resolve_amp_dtype("auto")
        self.scaler: torch.amp.GradScaler | None = None  # the last round's (fp16 AMP only)

    # -------------------------------------------------------------- pieces

    @staticmethod
    def optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        """A fresh optimiser for one round over the model's trainable parameters."""
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    @staticmethod
    def resolve_amp_dtype(name: str) -> torch.dtype:
        """The autocast dtype for a ``TrainConfig.amp_dtype``; bf16 only where the GPU has it."""
        if name == "float16":
            return torch.float16
        supported = torch.cuda.is_bf16_supported()
        if name == "bfloat16" and not supported:
            raise TaskError("amp_dtype=bfloat16 requested but this GPU does not support bf16")
        return torch.bfloat16 if supported else torch.float16

    def autocast(self, cfg: TrainConfig | None = None) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None or (cfg is not None and not cfg.amp):
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def to_device(self, batch: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        if not self.cuda:
            return [t.to(self.device) for t in batch]
        return [t.pin_memory().to(self.device, non_blocking=True) for t in batch]

    @staticmethod
    def batches(
        data: Sequence[torch.Tensor], cfg: TrainConfig, generator: torch.Generator
    ) -> Iterator[list[torch.Tensor]]:
        n = len(data[-1])
        total = cfg.steps if cfg.steps is not None else cfg.epochs * -(-n // cfg.batch_size)
        done = 0
        while done < total:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                yield [t[idx] for t in data]
                done += 1
                if done >= total:
                    return

    # -------------------------------------------------------------- fit / evaluate

    def fit(
        self,
        model: nn.Module,
        data: Sequence[torch.Tensor],
        cfg: TrainConfig,
        seed: int = 0,
        privacy: PrivacyLedger | None = None,
    ) -> FitStats:
        """One round; with ``privacy`` armed for DP-SGD (the node's ledger, see
        :mod:`fedhive.common.privacy.sgd`), a DP-SGD round instead
        (:func:`fedhive.common.privacy.sgd_training.fit_private`)."""
        if len(data[-1]) == 0:
            raise TaskError("no training examples on this node")
        data_seed, torch_seed = round_seeds(seed, cfg.round)
        devices = []
        if self.cuda:
            index = self.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(torch_seed)
            if privacy is not None and privacy.settings is not None:
                from fedhive.common.privacy.sgd_training import fit_private

                return fit_private(self, model, data, cfg, privacy)
            return self._fit(model, data, cfg, torch.Generator().manual_seed(data_seed))

    def _fit(
        self,
        model: nn.Module,
        data: Sequence[torch.Tensor],
        cfg: TrainConfig,
        gen: torch.Generator,
    ) -> FitStats:
        opt = self.optimizer(model, cfg)
        if self.cuda:
            self.amp_dtype = self.resolve_amp_dtype(cfg.amp_dtype)
        use_scaler = self.cuda and cfg.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in trainable] if cfg.mu > 0 else []
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = steps = 0
        amp = self.autocast(cfg)
        for batch in self.batches(data, cfg, gen):
            *inputs, yb = self.to_device(batch)
            opt.zero_grad(set_to_none=True)
            with amp:
                logits = self.forward(model, inputs)
                loss = nn.functional.cross_entropy(logits.float(), yb)
            total = loss
            if anchor:
                prox = sum((p - a).pow(2).sum() for p, a in zip(trainable, anchor, strict=True))
                total = loss + 0.5 * cfg.mu * prox
            if use_scaler and self.scaler is not None:
                self.scaler.scale(total).backward()
                if cfg.max_grad_norm is not None:
                    self.scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                self.scaler.step(opt)
                self.scaler.update()
            else:
                total.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                opt.step()
            with torch.no_grad():
                loss_sum.add_(loss, alpha=len(yb))
                correct.add_((logits.argmax(1) == yb).sum())
            seen += len(yb)
            steps += 1
        metrics = {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen}
        if not np.isfinite(metrics["loss"]):
            raise TaskError("training diverged (loss is not finite); lower the learning rate")
        return FitStats(examples=seen, steps=steps, metrics=metrics)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, data: Sequence[torch.Tensor], batch_size: int = 256
    ) -> dict[str, float]:
        model.eval()
        n = len(data[-1])
        outs: list[torch.Tensor] = []
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            *inputs, yb = self.to_device([t[start : start + batch_size] for t in data])
            with self.autocast():
                logits = self.forward(model, inputs).float()
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            outs.append(logits.cpu())
        logits = torch.cat(outs) if outs else torch.zeros(0, 2)
        return classification_metrics(logits, data[-1], loss_sum / max(n, 1))


def split_validation(
    n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:  # (train_idx, val_idx)
    """A seeded local validation split; none for tiny data sets."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = round(n * fraction) if n > 4 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])
