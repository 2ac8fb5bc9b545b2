"""Until the round engine runs SecAgg+, a run asking for it is refused, never run in the clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.common.tensors import TensorSpec
from fedhive.server.coordinator import Coordinator
from fedhive.server.store import RunStore


def test_coordinator_refuses_secure_aggregation_it_cannot_run(tmp_path: Path) -> None:
    config = ServerConfig(secure_aggregation="secagg+", run_dir=tmp_path / "run")
    specs = [TensorSpec("w", "float32", (2,))]
    with pytest.raises(ConfigError, match="secure_aggregation = 'secagg\\+' is not supported"):
        Coordinator(config, specs, [np.zeros(2, np.float32)], RunStore(tmp_path / "run"))
