"""The round engine imports no grpc: the servicer is the only gRPC layer on the coordinator."""

from __future__ import annotations

import subprocess
import sys

ENGINE = (
    "fedhive.server.coordinator",
    "fedhive.server.node_api",
    "fedhive.server.paths",
    "fedhive.server.round_close",
)


def test_the_round_engine_imports_no_grpc() -> None:
    # Prepare: a fresh interpreter, so nothing else imported grpc first
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in ENGINE)
        + "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))"
    )

    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # Assert
    assert out.stdout.strip() == "[]"
