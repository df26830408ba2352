#!/usr/bin/env bash
# Tools the test suite uses besides Python:
# - a docker-compose.yml validator: `docker compose config` (plugin) or `docker-compose config`
#   (Debian package) both work without a Docker engine;
# - promtool (Debian's prometheus package), which checks and unit-tests the alerting rules in
#   docker/prometheus/rules, and amtool (prometheus-alertmanager), which checks the Alertmanager
#   configuration (services are not started: only the binaries are used).
# Never fails: tests/test_compose.py and tests/test_alerting.py fail under CI when a tool is missing.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  "$HERE/apt_install.sh" docker-compose ||
    echo "tools: docker-compose not installed; tests/test_compose.py cannot validate the compose file" >&2
fi
if ! command -v promtool >/dev/null; then
  "$HERE/apt_install.sh" prometheus ||
    echo "tools: prometheus (promtool) not installed; tests/test_alerting.py cannot check the alerting rules" >&2
fi
if ! command -v amtool >/dev/null; then
  "$HERE/apt_install.sh" prometheus-alertmanager ||
    echo "tools: prometheus-alertmanager (amtool) not installed; tests/test_alerting.py cannot check alertmanager.yml" >&2
fi
exit 0
