#!/usr/bin/env bash
# The browser tests (tests/test_browser.py) drive Debian's chromium through Playwright; they fail,
# not skip, without it. Install it when missing (no `playwright install`: no browser download).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || [ -n "${CONVSCOPE_CHROMIUM:-}" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; }
