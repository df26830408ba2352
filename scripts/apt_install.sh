#!/usr/bin/env bash
# apt_install.sh PACKAGE...: install Debian packages as root or through passwordless sudo.
# Waits for the dpkg lock, runs `apt-get update` only when the install fails without it.
# Exits 3 (without output on stdout) when apt-get or the privileges are missing.
set -euo pipefail
command -v apt-get >/dev/null || { echo "apt: apt-get is not available" >&2; exit 3; }
if [ "$(id -u)" = 0 ]; then SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else echo "apt: need root or passwordless sudo to install $*" >&2; exit 3; fi
apt() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq "$@" </dev/null
}
echo "apt: installing $*"
if ! apt install --no-install-recommends "$@" >/dev/null 2>&1; then
  apt update >/dev/null
  apt install --no-install-recommends "$@" >/dev/null
fi
