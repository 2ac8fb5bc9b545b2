"""The README's example of a user-written strategy, loaded by import path as a user would."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.strategy.registry import build_strategy

ROOT = Path(__file__).resolve().parents[3]


def readme_strategy_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Choosing the aggregation rule") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its strategy example"
    return match.group(1)


class Update:
    def __init__(self, values: np.ndarray, n: int) -> None:
        self.values, self.num_examples = values, n

    def pieces(self, tensor: int):  # type: ignore[no-untyped-def]
        raw = self.values.tobytes()
        yield memoryview(raw[:8])
        yield memoryview(raw[8:])


def test_the_readme_strategy_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the README's code as the user's module mypkg/rules.py
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "rules.py").write_text(readme_strategy_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = [TensorSpec("w", "float32", (2, 3))]

    # Execute
    strategy = build_strategy("mypkg.rules:make", {"clip": 0.5})
    strategy.begin(specs, None)
    strategy.fold(Update(np.full(6, 2.0, np.float32), 1))
    strategy.fold(Update(np.full(6, -0.1, np.float32), 3))
    new = strategy.finalize()

    # Assert: (1 x 0.5 + 3 x -0.1) / 4, shaped and typed like the model
    assert new[0].dtype == np.float32 and new[0].shape == (2, 3)
    np.testing.assert_allclose(new[0], (0.5 - 0.3) / 4, rtol=1e-6)
    sys.modules.pop("mypkg.rules", None)
    sys.modules.pop("mypkg", None)
