# Sourced by scripts/cluster.sh and scripts/tls_node.sh (needs RABBITMQ_BIN): run the extra
# RabbitMQ nodes as the `rabbitmq` user with HOME=/var/lib/rabbitmq, so that they and the CLI
# share one Erlang cookie; without root or sudo they run as the current user.
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

as_rmq() { "${RUN_AS[@]}" env HOME="$RMQ_HOME" "$@"; }
ctl() { as_rmq "$RABBITMQ_BIN/rabbitmqctl" "$@"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
