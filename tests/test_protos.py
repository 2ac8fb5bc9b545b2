"""The committed protobuf/gRPC stubs are exactly what scripts/gen_protos.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "proto" / "fedhive" / "proto" / "v1"


def test_committed_stubs_match_freshly_generated_ones(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh_dir = tmp_path / "fedhive" / "proto" / "v1"

    fresh = sorted(p.name for p in fresh_dir.iterdir() if "_pb2" in p.name)
    committed = sorted(p.name for p in COMMITTED.iterdir() if "_pb2" in p.name)

    assert fresh == [
        "control_pb2.py",
        "control_pb2.pyi",
        "control_pb2_grpc.py",
        "coordinator_pb2.py",
        "coordinator_pb2.pyi",
        "coordinator_pb2_grpc.py",
    ]
    assert committed == fresh
    for name in fresh:
        assert (fresh_dir / name).read_bytes() == (COMMITTED / name).read_bytes(), name
