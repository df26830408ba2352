# Sourced by scripts/cluster.sh and scripts/tls_node.sh (needs ROOT and RABBITMQ_BIN): run the
# extra RabbitMQ nodes as the `rabbitmq` user with HOME=/var/lib/rabbitmq, so that they and the
# CLI share one Erlang cookie; without root or sudo they run as the current user.
RUN_AS=()
RMQ_HOME=$HOME
if [ "$(id -u)" = 0 ] && getent passwd rabbitmq >/dev/null; then
  RUN_AS=(runuser -u rabbitmq --)
  RMQ_HOME=/var/lib/rabbitmq
elif [ "$(id -un)" = rabbitmq ]; then
  RMQ_HOME=/var/lib/rabbitmq
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && getent passwd rabbitmq >/dev/null; then
  RUN_AS=(sudo -n -u rabbitmq --)
  RMQ_HOME=/var/lib/rabbitmq
fi

# From /: the checkout may be unreadable to the rabbitmq user (a clone in a 0700 home).
as_rmq() { (cd / && "${RUN_AS[@]}" env HOME="$RMQ_HOME" "$@"); }
ctl() { as_rmq "$RABBITMQ_BIN/rabbitmqctl" "$@"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Node state (config, data, logs, pid files) lives outside the checkout, where the user running
# the nodes can write whatever the checkout's permissions: under that user's own directories, one
# directory per checkout (named after its path, so that two clones never share state), private
# (0700) to that user. As the rabbitmq user: /var/lib/rabbitmq/fifoq-dev/<checkout>-<hash>;
# as the current user: ${XDG_STATE_HOME:-~/.local/state}/fifoq/<checkout>-<hash>.
state_root() {
  local name key
  name=$(basename "$ROOT" | tr -c 'A-Za-z0-9._\n-' _)
  key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
  if [ "$RMQ_HOME" = /var/lib/rabbitmq ]; then
    echo "$RMQ_HOME/fifoq-dev/$name-$key"
  else
    echo "${XDG_STATE_HOME:-$HOME/.local/state}/fifoq/$name-$key"
  fi
}

# Create DIR (and its missing parents) as the user running the nodes, readable by that user only.
make_private_dir() {
  as_rmq sh -c 'umask 077 && mkdir -p "$1" && test -w "$1"' sh "$1"
}

# Delete a node's state DIR, then the per-checkout directory and its parent when empty.
remove_state() {
  as_rmq rm -rf "$1"
  local root; root=$(state_root)
  as_rmq rmdir "$root" 2>/dev/null || true
  as_rmq rmdir "$(dirname "$root")" 2>/dev/null || true
}

# Read a file of the state directory (private to the user running the nodes).
read_state() { as_rmq cat "$1" 2>/dev/null; }
