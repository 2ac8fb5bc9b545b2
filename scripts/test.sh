#!/usr/bin/env bash
# The test command: lint, format check, type check, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# headless Chromium for the status page's browser test (Debian's packages; idempotent)
scripts/install_browser.sh
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  export FEDHIVE_BROWSER_REQUIRED=1  # installed: the browser test must run, not skip
fi
ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
