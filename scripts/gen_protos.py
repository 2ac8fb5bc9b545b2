"""Regenerate the committed protobuf/gRPC stubs under proto/.

Usage: python scripts/gen_protos.py [--out DIR]

With --out the stubs are written to DIR (mirroring proto/) instead of in place; the drift test
uses that to compare fresh output with the committed files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("fedhive/proto/v1")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency

    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not sources:
        raise SystemExit("no .proto files found")
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / PACKAGE_DIR).iterdir() if "_pb2" in p.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    out = ns.out if ns.out is not None else PROTO_ROOT
    files = generate(out)
    if ns.out is None:
        shutil.rmtree(PROTO_ROOT / PACKAGE_DIR / "__pycache__", ignore_errors=True)
    sys.stdout.write("".join(f"{p}\n" for p in files))


if __name__ == "__main__":
    main()
