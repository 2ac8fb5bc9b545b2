"""The run directory: config, one safetensors model per committed round, a JSON-lines record.

::

    RUN_DIR/config.json                 the run's validated config
    RUN_DIR/models/round-0007.safetensors   global model after round 7 (round 0 = initial)
    RUN_DIR/events.jsonl                one line per round / evaluation, fsynced
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedhive.common.safetensors_io import SafetensorsFile, fsync_dir, write_safetensors
from fedhive.common.tensors import TensorSpec


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.models_dir = self.run_dir / "models"
        self.events_path = self.run_dir / "events.jsonl"

    def create(self, config_json: str) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / ".config.json.tmp"
        tmp.write_text(config_json + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir / "config.json")
        fsync_dir(self.run_dir)

    def model_path(self, round_: int) -> Path:
        return self.models_dir / f"round-{round_:04d}.safetensors"

    def write_model(
        self,
        round_: int,
        specs: Sequence[TensorSpec],
        buffers: Iterable[memoryview | bytes],
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        path = self.model_path(round_)
        write_safetensors(path, specs, buffers, {"round": str(round_), **(metadata or {})})
        return path

    def read_model(self, round_: int) -> SafetensorsFile:
        return SafetensorsFile(self.model_path(round_))

    def append_event(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        with open(self.events_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
