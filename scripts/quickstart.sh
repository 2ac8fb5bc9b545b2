#!/usr/bin/env bash
# Set up, then run the quickstart: 4 nodes with non-IID digits, FedAvg over real gRPC.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec fedhive simulate --nodes 4 --rounds 12 --alpha 0.5 "$@"
