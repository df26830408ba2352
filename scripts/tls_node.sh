#!/usr/bin/env bash
# A RabbitMQ node with TLS only, on this machine and without Docker, for the TLS tests.
#
#   scripts/tls_node.sh start     generate the certificates if needed, start the node (idempotent)
#   scripts/tls_node.sh stop      stop it and delete its state
#   scripts/tls_node.sh status    pid and ports, or "not running"
#
# Node rmqtls@$(hostname -s): AMQPS on 127.0.0.1:5691 (no plain AMQP listener), the management
# API over HTTPS on 127.0.0.1:15691, Erlang distribution on 25691: clear of the machine's broker
# (5672/15672/15692/25672) and of scripts/cluster.sh (568N/1568N/2568N).
# AMQPS requires a client certificate signed by the development CA (mutual TLS); the management
# API requires only HTTPS. Certificates come from scripts/gen_certs.sh ($CERTS_DIR, default
# .certs) and are copied into the node's state directory ($TLS_NODE_DIR, default: a `tls-node`
# directory outside the checkout, private to the user running the node, see state_root in
# scripts/rmq_as_user.sh), so the rabbitmq user never needs to read the repository.
# Nodes run as the rabbitmq user with HOME=/var/lib/rabbitmq (shared Erlang cookie), as in
# scripts/cluster.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CERTS_DIR=${CERTS_DIR:-$ROOT/.certs}
RABBITMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
# shellcheck source=scripts/rmq_as_user.sh
. "$ROOT/scripts/rmq_as_user.sh"
NODE_DIR=${TLS_NODE_DIR:-$(state_root)/tls-node}
HOST=$(hostname -s)
NODE=rmqtls@$HOST
AMQPS_PORT=${TLS_AMQPS_PORT:-5691}
HTTPS_PORT=${TLS_HTTPS_PORT:-15691}
DIST_PORT=${TLS_DIST_PORT:-25691}
BOOT_TIMEOUT=${TLS_BOOT_TIMEOUT:-120}
PID_FILE=$NODE_DIR/rmqtls.pid

log() { echo "tls_node: $*"; }
die() { echo "tls_node: $*" >&2; exit 1; }

node_pid() {
  local p; p=$(read_state "$PID_FILE" | tr -dc 0-9)
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  as_rmq cat "/proc/$p/environ" 2>/dev/null | tr '\0' '\n' | grep -q "^RABBITMQ_NODENAME=rmqtls@" || return 1
  echo "$p"
}

prepare() {
  "$ROOT/scripts/gen_certs.sh" >/dev/null
  make_private_dir "$NODE_DIR" ||
    die "the user running the node ($(as_rmq id -un)) cannot create or write $NODE_DIR: set TLS_NODE_DIR to a directory it can write"
  as_rmq mkdir -p "$NODE_DIR/mnesia" "$NODE_DIR/log" "$NODE_DIR/tls"
  local f
  for f in ca.pem server.pem server.key; do
    as_rmq sh -c 'cat > "$1"; chmod 0600 "$1"' sh "$NODE_DIR/tls/$f" <"$CERTS_DIR/$f"
  done
  as_rmq sh -c ': > "$1/rabbitmq-env.conf"' sh "$NODE_DIR"
  as_rmq sh -c 'cat > "$1"' sh "$NODE_DIR/rabbitmq.conf" <<EOF
# TLS only: no plain-text AMQP listener.
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $NODE_DIR/tls/ca.pem
ssl_options.certfile = $NODE_DIR/tls/server.pem
ssl_options.keyfile = $NODE_DIR/tls/server.key
# Mutual TLS: clients must present a certificate signed by the CA.
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2

management.ssl.port = $HTTPS_PORT
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = $NODE_DIR/tls/ca.pem
management.ssl.certfile = $NODE_DIR/tls/server.pem
management.ssl.keyfile = $NODE_DIR/tls/server.key

log.file.level = info
log.console = false
EOF
  as_rmq sh -c 'echo "[rabbitmq_management]." > "$1"' sh "$NODE_DIR/enabled_plugins"
}

cmd_start() {
  [ -x "$RABBITMQ_BIN/rabbitmq-server" ] || die "RabbitMQ is not installed ($RABBITMQ_BIN/rabbitmq-server missing)"
  if p=$(node_pid); then log "$NODE already running (pid $p)"; return 0; fi
  port_open "$AMQPS_PORT" && die "port $AMQPS_PORT is taken by another process"
  port_open "$HTTPS_PORT" && die "port $HTTPS_PORT is taken by another process"
  prepare
  as_rmq rm -f "$PID_FILE"
  log "starting $NODE (amqps $AMQPS_PORT, management https $HTTPS_PORT)"
  as_rmq env \
    RABBITMQ_CONF_ENV_FILE="$NODE_DIR/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$NODE" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_DIST_PORT="$DIST_PORT" \
    RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
    RABBITMQ_LOG_BASE="$NODE_DIR/log" \
    RABBITMQ_PID_FILE="$PID_FILE" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 -kernel inet_dist_use_interface {127,0,0,1}" \
    "$RABBITMQ_BIN/rabbitmq-server" -detached >/dev/null
  local deadline=$((SECONDS + BOOT_TIMEOUT))
  until port_open "$AMQPS_PORT" && port_open "$HTTPS_PORT"; do
    [ $SECONDS -ge $deadline ] && die "$NODE did not come up within ${BOOT_TIMEOUT}s; see $NODE_DIR/log"
    sleep 1
  done
  log "$NODE up: amqps://127.0.0.1:$AMQPS_PORT https://127.0.0.1:$HTTPS_PORT (CA $CERTS_DIR/ca.pem)"
}

cmd_stop() {
  if p=$(node_pid); then
    log "stopping $NODE (pid $p)"
    ctl -n "$NODE" -q stop >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$p" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then kill -9 "$p" 2>/dev/null || true; fi
      sleep 0.5
    done
  fi
  remove_state "$NODE_DIR"
  log "stopped, state removed"
}

cmd_status() {
  if p=$(node_pid); then echo "$NODE pid $p amqps $AMQPS_PORT https $HTTPS_PORT"; else echo "$NODE not running"; return 1; fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
