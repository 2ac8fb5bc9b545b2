#!/usr/bin/env bash
# Create .venv and install fedhive with its dev tools. The CPU build of torch is pinned here
# (pyproject keeps the range open for users); an unpinned torch would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python -c "import fedhive.server, fedhive.client, fedhive.common, fedhive.proto.v1; print('fedhive installed')"
