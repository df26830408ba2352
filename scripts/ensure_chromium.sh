#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser tests when they are missing.
# Never fails: without apt or root the browser tests report what is missing themselves.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if "$HERE/apt_install.sh" chromium chromium-driver; then
  echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
else
  echo "chromium: not installed (no apt-get or no root/sudo); browser tests will say so" >&2
fi
exit 0
