#!/usr/bin/env bash
# Tools the test suite uses besides Python: a docker-compose.yml validator.
# `docker compose config` (plugin) or `docker-compose config` (Debian package) both work without
# a Docker engine. Never fails: tests/test_compose.py fails under CI when no validator exists.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; then
  exit 0
fi
"$HERE/apt_install.sh" docker-compose ||
  echo "tools: docker-compose not installed; tests/test_compose.py cannot validate the compose file" >&2
exit 0
