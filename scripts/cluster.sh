#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, without Docker, for the availability tests.
#
#   scripts/cluster.sh start          start the 3 nodes (idempotent), join 2 and 3 to 1, print URLs
#   scripts/cluster.sh stop           stop every node and delete the state directory
#   scripts/cluster.sh status         pid and ports of each node, cluster_status of node 1
#   scripts/cluster.sh kill N         SIGKILL node N (1..3) through its pid file
#   scripts/cluster.sh start-node N   start node N again (same data dir: it rejoins by itself)
#   scripts/cluster.sh stop-node N    stop node N gracefully
#   scripts/cluster.sh pid N          print the OS pid of node N
#   scripts/cluster.sh urls           print the AMQP URLs, one a line
#
# Node N (1..3) is rmqN@$(hostname -s), AMQP on 568N, management on 1568N, Erlang
# distribution on 2568N, all bound to 127.0.0.1. The Prometheus plugin is not enabled (its
# fixed port 15692 would clash between nodes and with the machine's own broker).
# State (config, data, logs, pid files) lives in $CLUSTER_DIR (default: a `cluster` directory
# outside the checkout, private to the user running the nodes: see state_root in
# scripts/rmq_as_user.sh; `stop` deletes it). Nodes run as the `rabbitmq` user with
# HOME=/var/lib/rabbitmq so that they and the CLI share one Erlang cookie; without root or sudo
# they run as the current user.
# Every node replicates to the same disk: this tests the loss of a node process, not of a host.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RABBITMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
# shellcheck source=scripts/rmq_as_user.sh
. "$ROOT/scripts/rmq_as_user.sh"
CLUSTER_DIR=${CLUSTER_DIR:-$(state_root)/cluster}
HOST=$(hostname -s)
NODES=(1 2 3)
# After a whole-cluster stop a node may wait for its peers (Mnesia: up to 10 x 30 s) at boot.
BOOT_TIMEOUT=${CLUSTER_BOOT_TIMEOUT:-300}

log() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 1; }

node_name() { echo "rmq$1@$HOST"; }
amqp_port() { echo $((5680 + $1)); }
mgmt_port() { echo $((15680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$CLUSTER_DIR/rmq$1"; }
pid_file() { echo "$(node_dir "$1")/rmq$1.pid"; }

check_n() {
  case "${1:-}" in 1|2|3) ;; *) die "node number must be 1, 2 or 3 (got '${1:-}')";; esac
}

node_pid() {
  local p; p=$(read_state "$(pid_file "$1")" | tr -dc 0-9)
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  # a stale pid file after a reboot could name an unrelated process: check it is this node
  as_rmq cat "/proc/$p/environ" 2>/dev/null | tr '\0' '\n' | grep -q "^RABBITMQ_NODENAME=rmq$1@" || return 1
  echo "$p"
}

require_rabbitmq() {
  [ -x "$RABBITMQ_BIN/rabbitmq-server" ] ||
    die "RabbitMQ is not installed ($RABBITMQ_BIN/rabbitmq-server missing): run scripts/ensure_rabbitmq.sh or apt-get install rabbitmq-server"
}

prepare_dirs() {
  make_private_dir "$CLUSTER_DIR" ||
    die "the user running the nodes ($(as_rmq id -un)) cannot create or write $CLUSTER_DIR: set CLUSTER_DIR to a directory it can write"
  as_rmq sh -c ': > "$1/rabbitmq-env.conf"' sh "$CLUSTER_DIR"   # isolate from /etc/rabbitmq/rabbitmq-env.conf
  local n d
  for n in "${NODES[@]}"; do
    d=$(node_dir "$n")
    as_rmq mkdir -p "$d/mnesia" "$d/log"
    as_rmq sh -c 'cat > "$1"' sh "$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
management.tcp.port = $(mgmt_port "$n")
management.tcp.ip = 127.0.0.1
loopback_users = none
log.file.level = info
log.console = false
EOF
    as_rmq sh -c 'echo "[rabbitmq_management]." > "$1"' sh "$d/enabled_plugins"
  done
}

start_node_process() {
  local n=$1 d; d=$(node_dir "$n")
  if node_pid "$n" >/dev/null; then
    log "$(node_name "$n") already running (pid $(node_pid "$n"))"
    return 0
  fi
  port_open "$(amqp_port "$n")" && die "port $(amqp_port "$n") is taken by another process"
  as_rmq rm -f "$(pid_file "$n")"
  log "starting $(node_name "$n") (amqp $(amqp_port "$n"), management $(mgmt_port "$n"))"
  as_rmq env \
    RABBITMQ_CONF_ENV_FILE="$CLUSTER_DIR/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$(pid_file "$n")" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 -kernel inet_dist_use_interface {127,0,0,1}" \
    "$RABBITMQ_BIN/rabbitmq-server" -detached >/dev/null
}

# Wait until node N accepts AMQP and management connections. A node whose process died during
# boot (seen once on a loaded 2-core CI machine after a whole-cluster stop) is started once more;
# on failure the end of its log goes with the error, so that the cause is in the CI output.
wait_node() {
  local n=$1 t0=$SECONDS deadline=$((SECONDS + BOOT_TIMEOUT)) restarted=0
  until port_open "$(amqp_port "$n")" && port_open "$(mgmt_port "$n")"; do
    if [ $restarted = 0 ] && [ $((SECONDS - t0)) -ge 5 ] && ! node_alive "$n"; then
      log "$(node_name "$n") exited during boot; starting it once more"
      log_tail "$n" >&2
      restarted=1
      start_node_process "$n"
    fi
    if [ $SECONDS -ge $deadline ]; then
      log_tail "$n" >&2
      die "$(node_name "$n") did not come up within ${BOOT_TIMEOUT}s; see $(node_dir "$n")/log"
    fi
    sleep 1
  done
}

node_alive() {  # is a beam process of node N running (pid file written or not yet)?
  local p
  for p in $(pgrep -f 'beam.*rabbit boot' 2>/dev/null); do
    as_rmq cat "/proc/$p/environ" 2>/dev/null | tr '\0' '\n' | grep -q "^RABBITMQ_NODENAME=rmq$1@" && return 0
  done
  return 1
}

log_tail() {  # the last lines of node N's logs
  local f
  for f in $(as_rmq sh -c 'ls "$1"/log/*.log 2>/dev/null' sh "$(node_dir "$1")"); do
    echo "--- last lines of $f"
    as_rmq tail -n 40 "$f"
  done
}

running_nodes() {  # running nodes as seen by node 1, one a line
  ctl -n "$(node_name 1)" -q cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("running_nodes", [])))'
}

clustered() {  # all 3 nodes running in one cluster?
  local r; r=$(running_nodes 2>/dev/null) || return 1
  local n
  for n in "${NODES[@]}"; do grep -qx "$(node_name "$n")" <<<"$r" || return 1; done
}

join_node() {
  local n=$1 node; node=$(node_name "$n")
  if running_nodes | grep -qx "$node"; then return 0; fi
  log "joining $node to $(node_name 1)"
  ctl -n "$node" -q stop_app
  ctl -n "$node" -q join_cluster "$(node_name 1)"
  ctl -n "$node" -q start_app
}

print_urls() {
  local n
  for n in "${NODES[@]}"; do echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2F"; done
}

cmd_start() {
  require_rabbitmq
  local t0; t0=$(date +%s.%N)
  prepare_dirs
  local n
  for n in "${NODES[@]}"; do start_node_process "$n"; done
  for n in "${NODES[@]}"; do wait_node "$n"; done
  log "nodes up after $(elapsed "$t0")s"
  if ! clustered; then
    join_node 2
    join_node 3
    local deadline=$((SECONDS + 60))
    until clustered; do
      [ $SECONDS -ge $deadline ] && die "nodes did not form a cluster; see $CLUSTER_DIR/rmq*/log"
      sleep 1
    done
  fi
  log "3 nodes running and clustered in $(elapsed "$t0")s:"
  print_urls
}

cmd_stop() {
  local n pids=()
  if as_rmq test -d "$CLUSTER_DIR"; then
    for n in "${NODES[@]}"; do
      if p=$(node_pid "$n"); then
        log "stopping $(node_name "$n") (pid $p)"
        ctl -n "$(node_name "$n")" -q stop >/dev/null 2>&1 &
        pids+=("$p")
      fi
    done
    local deadline=$((SECONDS + 60)) p
    for p in "${pids[@]}"; do
      while kill -0 "$p" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then kill -9 "$p" 2>/dev/null || true; fi
        sleep 1
      done
    done
    wait || true
    remove_state "$CLUSTER_DIR"
  fi
  log "stopped, state removed"
}

cmd_kill() {
  check_n "$1"
  local p; p=$(node_pid "$1") || die "$(node_name "$1") is not running"
  kill -9 "$p"
  while kill -0 "$p" 2>/dev/null; do sleep 0.2; done
  log "killed $(node_name "$1") (pid $p)"
}

cmd_start_node() {
  check_n "$1"
  require_rabbitmq
  as_rmq test -d "$(node_dir "$1")/mnesia" || die "no state for node $1: run '$0 start' first"
  local t0; t0=$(date +%s.%N)
  start_node_process "$1"
  wait_node "$1"
  local deadline=$((SECONDS + 60))
  until running_nodes 2>/dev/null | grep -qx "$(node_name "$1")" ||
        ctl -n "$(node_name "$1")" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name 1)\""; do
    [ $SECONDS -ge $deadline ] && die "$(node_name "$1") is up but did not rejoin the cluster"
    sleep 1
  done
  log "$(node_name "$1") up and in the cluster after $(elapsed "$t0")s"
}

cmd_stop_node() {
  check_n "$1"
  local p; p=$(node_pid "$1") || { log "$(node_name "$1") is not running"; return 0; }
  ctl -n "$(node_name "$1")" -q stop >/dev/null
  while kill -0 "$p" 2>/dev/null; do sleep 0.2; done
  log "stopped $(node_name "$1")"
}

cmd_status() {
  local n
  for n in "${NODES[@]}"; do
    if p=$(node_pid "$n"); then
      echo "$(node_name "$n") pid $p amqp $(amqp_port "$n") management $(mgmt_port "$n")"
    else
      echo "$(node_name "$n") not running"
    fi
  done
  if node_pid 1 >/dev/null; then
    echo "running nodes seen by $(node_name 1):"
    running_nodes | sed 's/^/  /'
  fi
}

elapsed() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:-}" ;;
  start-node) cmd_start_node "${2:-}" ;;
  stop-node) cmd_stop_node "${2:-}" ;;
  pid) check_n "${2:-}"; node_pid "$2" || die "$(node_name "$2") is not running" ;;
  urls) print_urls ;;
  *) echo "usage: $0 start|stop|status|urls|kill N|start-node N|stop-node N|pid N" >&2; exit 2 ;;
esac
