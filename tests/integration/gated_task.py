"""The digits task behind a gate the test holds: the n-th `fit` of a node process waits until the
file named by FEDHIVE_TEST_GATE holds a number >= n. A browser test uses it to hold a live run at
a known round for as long as the page takes to show it, instead of hoping it looks in time."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from fedhive.common.api.task import FitResult, Scalar, TaskContext
from fedhive.common.tasks.digits import DigitsTask

GATE_ENV = "FEDHIVE_TEST_GATE"
GATE_WAIT_S = 120.0
GATE_POLL_S = 0.05


def open_rounds(gate: Path) -> int:
    try:
        return int(gate.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


class GatedDigits(DigitsTask):
    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        self.gate = Path(os.environ[GATE_ENV])
        self.fits = 0

    def fit(self, model: nn.Module, config: Mapping[str, Scalar]) -> FitResult:
        self.fits += 1
        deadline = time.monotonic() + GATE_WAIT_S
        while open_rounds(self.gate) < self.fits:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {self.gate} stayed below {self.fits} for {GATE_WAIT_S}s")
            time.sleep(GATE_POLL_S)
        return super().fit(model, config)


def make_task(ctx: TaskContext) -> GatedDigits:
    return GatedDigits(ctx)
