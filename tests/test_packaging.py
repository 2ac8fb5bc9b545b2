"""Packaging: ``fedhive`` is a PEP 420 namespace over four source roots, shipped as one wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ["common", "proto", "server", "client"]
IMPORTS = [
    "fedhive.common.wire.serde",
    "fedhive.proto.v1.coordinator_pb2",
    "fedhive.server.coordinator",
    "fedhive.client.node",
]


@pytest.mark.parametrize("root", SOURCE_ROOTS)
def test_source_root_has_no_fedhive_init_and_is_no_package(root):
    assert (ROOT / root / "fedhive" / root).is_dir()

    assert not (ROOT / root / "fedhive" / "__init__.py").exists()
    assert not (ROOT / root / "__init__.py").exists()


def test_no_fedhive_init_anywhere_in_the_sources():
    found = [
        str(p.relative_to(ROOT))
        for root in SOURCE_ROOTS
        for p in (ROOT / root).rglob("__init__.py")
        if p.parent.name == "fedhive"
    ]

    assert found == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("fedhive-*.whl")
    return built


def test_wheel_holds_only_the_fedhive_namespace(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()

    stray = [
        n
        for n in names
        if not (n.startswith("fedhive/") or (n.startswith("fedhive-") and ".dist-info/" in n))
    ]
    assert stray == []
    assert "fedhive/__init__.py" not in names
    for package in SOURCE_ROOTS:
        assert f"fedhive/{package}/__init__.py" in names
    assert "fedhive/proto/v1/coordinator_pb2.py" in names
    assert "fedhive/server/strategy/fedavg.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_ships_the_status_page_with_its_chart_script_and_its_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())

    static = "fedhive/server/status/static/"
    for name in ("index.html", "status.js", "uPlot.iife.min.js", "uPlot.LICENSE", "login.html"):
        assert static + name in names


def test_wheel_installs_and_imports_without_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    script = textwrap.dedent(
        f"""
        import importlib, json, os, sys
        hidden = {{os.path.realpath(p) for p in {[str(ROOT / r) for r in SOURCE_ROOTS]!r}}}
        hidden.add(os.path.realpath({str(ROOT)!r}))
        sys.path[:] = [{str(site)!r}] + [
            p for p in sys.path if p and os.path.realpath(p) not in hidden
        ]
        files = {{name: importlib.import_module(name).__file__ for name in {IMPORTS!r}}}
        import fedhive
        print(json.dumps({{"files": files, "namespace": list(fedhive.__path__)}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )

    result = json.loads(done.stdout.strip().splitlines()[-1])
    real_site = Path(os.path.realpath(site))
    assert set(result["files"]) == set(IMPORTS)
    for name, file in result["files"].items():
        assert Path(os.path.realpath(file)).is_relative_to(real_site), (name, file)
    assert [Path(os.path.realpath(p)) for p in result["namespace"]] == [real_site / "fedhive"]
