#!/usr/bin/env bash
# Make sure a RabbitMQ broker with the management (and Prometheus) plugin is reachable.
# Idempotent; safe under CI (no stdin). Reads:
#   AMQP_URL           default amqp://guest:guest@127.0.0.1:5672/%2F (first of a comma-separated list)
#   RABBITMQ_API_URL   default http://127.0.0.1:15672
#   RABBITMQ_API_USER / RABBITMQ_API_PASSWORD   default guest / guest, as in backend/settings.py
#                      (the console and the tests use the same defaults)
# On a local broker it may, as root or through passwordless sudo: install rabbitmq-server with
# apt-get, start it, and enable rabbitmq_management and rabbitmq_prometheus.
set -euo pipefail

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}
RABBITMQ_API_URL=${RABBITMQ_API_URL:-http://127.0.0.1:15672}

export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "broker: $*"; }
fail() { echo "broker: $*" >&2; exit 1; }

command -v python3 >/dev/null || fail "python3 is required (apt-get install python3)"

# host and port of the first AMQP URL
read -r AMQP_HOST AMQP_PORT < <(python3 - "$AMQP_URL" <<'EOF'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1].split(",")[0].strip())
port = p.port or (5671 if p.scheme == "amqps" else 5672)
print(p.hostname or "127.0.0.1", port)
EOF
)
# The same defaults as backend/settings.py (Settings.api_user / api_password), not the AMQP_URL
# credentials: what this script checks is what the console and the tests will use.
API_USER=${RABBITMQ_API_USER:-guest}
API_PASS=${RABBITMQ_API_PASSWORD:-guest}

case "$AMQP_HOST" in
  127.*|localhost|::1|"$(hostname -s)"|"$(hostname)") LOCAL=1 ;;
  *) LOCAL=0 ;;
esac

if [ "$(id -u)" = 0 ]; then SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else SUDO=(false); fi
can_admin() { [ "${SUDO[*]}" != false ]; }

amqp_up() { (exec 3<>"/dev/tcp/$AMQP_HOST/$AMQP_PORT") 2>/dev/null; }

# prints the HTTP status of GET /api/overview (000 when nothing answers)
api_status() {
  python3 - "$RABBITMQ_API_URL" "$API_USER" "$API_PASS" <<'EOF'
import base64, sys, urllib.request, urllib.error
url, user, pw = sys.argv[1].rstrip("/") + "/api/overview", sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 2
  done
  say "$what"
}

api_ok() { [ "$(api_status)" = 200 ]; }

enable_plugins() {
  say "enabling rabbitmq_management and rabbitmq_prometheus"
  "${SUDO[@]}" rabbitmq-plugins enable "$@" rabbitmq_management rabbitmq_prometheus >/dev/null
}

# prints the broker node's file descriptor limit as the management API reports it (0 if unknown)
fd_total() {
  python3 - "$RABBITMQ_API_URL" "$API_USER" "$API_PASS" <<'EOF'
import base64, json, sys, urllib.request
url, user, pw = sys.argv[1].rstrip("/") + "/api/nodes?columns=fd_total", sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(min(int(n.get("fd_total") or 0) for n in json.load(r)))
except Exception:
    print(0)
EOF
}

# Each quorum queue keeps files open. With Debian's default of 1024 descriptors (su applies
# pam_limits), a node stops accepting AMQP connections past about 350 quorum queues: handshakes
# time out while the management API still answers (measured on 3.10.8). rabbitmq-env.conf is
# sourced by the server's start script as the rabbitmq user, so raising the soft limit to the hard
# one there survives restarts.
MIN_FDS=4096
settled_fd_total() {  # node statistics appear a few seconds after boot
  local fds tries=0; fds=$(fd_total)
  while [ "$fds" = 0 ] && [ $tries -lt 15 ]; do sleep 2; tries=$((tries + 1)); fds=$(fd_total); done
  echo "$fds"
}
ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
ensure_fd_limit() {
  [ $LOCAL = 1 ] && can_admin || return 0
  local fds; fds=$(settled_fd_total)
  [ "$fds" = 0 ] && { say "warning: could not read the broker's file descriptor limit"; return 0; }
  [ "$fds" -ge $MIN_FDS ] && return 0
  if ! "${SUDO[@]}" grep -q 'fifoq: file descriptors' "$ENV_CONF" 2>/dev/null; then
    say "raising the broker's file descriptor limit ($fds) in $ENV_CONF"
    printf '%s\n' '# fifoq: file descriptors for many quorum queues (scripts/ensure_rabbitmq.sh)' \
      'ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true' | "${SUDO[@]}" tee -a "$ENV_CONF" >/dev/null
  fi
  say "restarting the local broker so that the new limit applies"
  "${SUDO[@]}" rabbitmqctl -q stop </dev/null >/dev/null 2>&1 || true
  wait_for 60 "broker stopped" sh -c "! (exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT) 2>/dev/null" || true
  "${SUDO[@]}" rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
  wait_for 90 "AMQP port $AMQP_PORT answers" amqp_up || fail "rabbitmq-server did not come back on $AMQP_HOST:$AMQP_PORT: see /var/log/rabbitmq"
  "${SUDO[@]}" rabbitmqctl -q await_startup --timeout 60 </dev/null >/dev/null 2>&1 || true
  wait_for 60 "management API is up" api_ok || true
  fds=$(settled_fd_total)
  [ "$fds" -ge $MIN_FDS ] || say "warning: the broker still has $fds file descriptors; many quorum queues will stop new connections"
}

finish() {
  local st; st=$(api_status)
  case "$st" in
    200) ensure_fd_limit
         say "ok: AMQP on $AMQP_HOST:$AMQP_PORT, management API on $RABBITMQ_API_URL"; exit 0 ;;
    401) fail "management API at $RABBITMQ_API_URL refuses user '$API_USER': set RABBITMQ_API_USER/RABBITMQ_API_PASSWORD" ;;
    *) return 1 ;;
  esac
}

# 1. everything already there
if amqp_up; then
  finish || true
  # 2. broker up, API missing
  if [ $LOCAL = 1 ] && can_admin; then
    enable_plugins
    wait_for 60 "management API is up" api_ok || true
    finish || fail "management API at $RABBITMQ_API_URL does not answer after enabling the plugin: check the broker log in /var/log/rabbitmq"
  fi
  fail "management API at $RABBITMQ_API_URL does not answer: run 'rabbitmq-plugins enable rabbitmq_management' on the broker or set RABBITMQ_API_URL"
fi

# 3. nothing answers
[ $LOCAL = 1 ] || fail "no broker answers on $AMQP_HOST:$AMQP_PORT: start it or fix AMQP_URL"
can_admin || fail "no broker on $AMQP_HOST:$AMQP_PORT and no root/sudo to start one: run 'sudo scripts/ensure_rabbitmq.sh' or set AMQP_URL to a running broker"

if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
  command -v apt-get >/dev/null || fail "rabbitmq-server is not installed and apt-get is unavailable: install RabbitMQ or set AMQP_URL"
  say "installing rabbitmq-server with apt-get"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server </dev/null >/dev/null
fi
if ! amqp_up && "${SUDO[@]}" rabbitmqctl -q ping </dev/null >/dev/null 2>&1; then
  fail "the local RabbitMQ node runs but does not listen on $AMQP_HOST:$AMQP_PORT: fix AMQP_URL or the broker's listeners"
fi
# enable the plugins before boot (works with the node stopped)
if ! amqp_up; then
  say "enabling rabbitmq_management and rabbitmq_prometheus (offline)"
  "${SUDO[@]}" rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_prometheus >/dev/null || true
fi

tried_service=0
if [ -d /run/systemd/system ]; then
  say "starting rabbitmq-server (systemctl)"
  "${SUDO[@]}" systemctl start rabbitmq-server </dev/null || true
  tried_service=1
elif command -v service >/dev/null && [ -x /etc/init.d/rabbitmq-server ]; then
  say "starting rabbitmq-server (service)"
  "${SUDO[@]}" service rabbitmq-server start </dev/null >/dev/null 2>&1 || true
  tried_service=1
fi
if ! { [ $tried_service = 1 ] && wait_for 20 "rabbitmq-server is up" amqp_up; }; then
  say "starting rabbitmq-server -detached"
  "${SUDO[@]}" rabbitmq-server -detached </dev/null || true
fi
wait_for 90 "AMQP port $AMQP_PORT answers" amqp_up ||
  fail "rabbitmq-server did not open $AMQP_HOST:$AMQP_PORT within 90 s: see /var/log/rabbitmq"
"${SUDO[@]}" rabbitmqctl -q await_startup --timeout 60 </dev/null >/dev/null 2>&1 || true

finish || true
enable_plugins
wait_for 60 "management API is up" api_ok || true
finish || fail "management API at $RABBITMQ_API_URL does not answer: see /var/log/rabbitmq"
