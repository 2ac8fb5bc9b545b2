#!/usr/bin/env bash
# Headless Chromium and its WebDriver from the distribution's packages, for the status page's
# browser test (tests/integration/test_status_browser.py). Idempotent: nothing is done when both
# are installed. Where apt is truly unavailable (not Debian/Ubuntu, or neither root nor sudo) it
# says why and returns 0: the browser test then skips with that reason; any other failure fails.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser: no apt-get on this machine; the browser test will be skipped" >&2
  exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_browser: not root and no password-less sudo; the browser test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# another apt may hold the lock (a shared CI machine): wait for it rather than fail
APT=("${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 -q)
if ! "${APT[@]}" install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install -y --no-install-recommends chromium chromium-driver >/dev/null
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null
echo "install_browser: $(chromium --version 2>/dev/null || echo chromium)"
