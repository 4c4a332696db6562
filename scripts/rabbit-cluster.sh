#!/usr/bin/env bash
# A RabbitMQ cluster of three extra nodes on this machine, beside (never joined to) the broker
# on 5672: nodes warren-c1..3@localhost on AMQP ports BASE+1..3 (BASE defaults to 5680), each
# with its own data directory under DIR (default /tmp/warren-rabbit-cluster). The fault suite's
# cluster scenario drives it; it is also a quick way to try Warren against a cluster by hand:
#
#   scripts/rabbit-cluster.sh start        # three nodes, clustered, quorum queues replicated
#   WARREN_AMQP_URL=amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f \
#     target/debug/warren worker
#   scripts/rabbit-cluster.sh leader warren.task.player.dump   # the node leading a quorum queue
#   scripts/rabbit-cluster.sh kill 2       # kill -9 node 2's Erlang VM
#   scripts/rabbit-cluster.sh restart 2    # start it again: it rejoins by itself
#   scripts/rabbit-cluster.sh members warren.task.player.dump  # how many nodes replicate it
#   scripts/rabbit-cluster.sh queues       # every queue and its messages
#   scripts/rabbit-cluster.sh connections  # each client connection and its node
#   scripts/rabbit-cluster.sh stop         # stop all three and remove their data
#
# Needs root (the nodes run as the rabbitmq user, with its Erlang cookie) and Debian's
# rabbitmq-server package (scripts/services.sh installs it).
set -euo pipefail

BASE=${WARREN_CLUSTER_BASE_PORT:-5680}
DIR=${WARREN_CLUSTER_DIR:-/tmp/warren-rabbit-cluster}
BIN=/usr/lib/rabbitmq/bin

node() { echo "warren-c$1@localhost"; }
log() { printf 'rabbit-cluster: %s\n' "$*" >&2; }

as_rabbitmq() { # command...
  su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq $*"
}

ctl() { # n args...
  local n=$1
  shift
  as_rabbitmq "$BIN/rabbitmqctl -n $(node "$n") $*"
}

start_node() { # n
  local n=$1 home="$DIR/c$1"
  mkdir -p "$home/mnesia" "$home/log"
  cat >"$home/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$((BASE + n))
loopback_users = none
EOF
  echo '[].' >"$home/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$home"
  as_rabbitmq "env RABBITMQ_NODENAME=$(node "$n") RABBITMQ_NODE_PORT=$((BASE + n)) \
    RABBITMQ_DIST_PORT=$((BASE + 20000 + n)) RABBITMQ_CONFIG_FILE=$home/rabbitmq.conf \
    RABBITMQ_MNESIA_BASE=$home/mnesia RABBITMQ_LOG_BASE=$home/log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$home/enabled_plugins RABBITMQ_PID_FILE=$home/pid \
    $BIN/rabbitmq-server -detached" >/dev/null
  # The node registers with epmd a moment after -detached returns: until then nothing answers.
  for _ in $(seq 1 120); do
    if ctl "$n" await_startup --timeout 60 >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "node $(node "$n") did not start; its log is under $home/log"
  return 1
}

pid_of() { # n
  cat "$DIR/c$1/pid"
}

case "${1:-}" in
  start)
    "$0" stop
    for n in 1 2 3; do start_node "$n"; done
    for n in 2 3; do
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster "$(node 1)" >/dev/null
      ctl "$n" start_app >/dev/null
    done
    log "three nodes clustered; WARREN_AMQP_URL=amqp://guest:guest@127.0.0.1:$((BASE + 1))/%2f,amqp://guest:guest@127.0.0.1:$((BASE + 2))/%2f,amqp://guest:guest@127.0.0.1:$((BASE + 3))/%2f"
    ;;
  stop)
    for n in 1 2 3; do
      if [ -f "$DIR/c$n/pid" ]; then kill -9 "$(pid_of "$n")" 2>/dev/null || true; fi
    done
    rm -rf "$DIR"
    ;;
  kill)
    kill -9 "$(pid_of "$2")"
    ;;
  restart)
    start_node "$2"
    ;;
  leader) # queue: the number of the node that leads it, asked of the first node that answers
    for n in 1 2 3; do
      if leader=$(ctl "$n" list_queues name leader --quiet --no-table-headers 2>/dev/null); then
        leader=$(echo "$leader" | awk -v q="$2" '$1 == q { print $2 }')
        leader=${leader#warren-c}
        echo "${leader%@*}"
        exit 0
      fi
    done
    exit 1
    ;;
  members) # queue: how many nodes hold a replica of it
    for n in 1 2 3; do
      if out=$(ctl "$n" list_queues name members --quiet --no-table-headers 2>/dev/null); then
        echo "$out" | awk -v q="$2" '$1 == q { print gsub(/@/, "@") }'
        exit 0
      fi
    done
    exit 1
    ;;
  queues) # every queue with its messages (ready and unacked), from the first node that answers
    for n in 1 2 3; do
      if ctl "$n" list_queues name messages --quiet --no-table-headers 2>/dev/null; then exit 0; fi
    done
    exit 1
    ;;
  connections) # each client connection's name and the number of the node it is on
    for n in 1 2 3; do
      if out=$(ctl "$n" list_connections port client_properties --quiet --no-table-headers 2>/dev/null); then
        echo "$out" | while IFS=$'\t' read -r port props; do
          name=$(echo "$props" | grep -o '{"connection_name","[^"]*"}' | sed -e 's/^{"connection_name","//' -e 's/"}$//' || true)
          printf '%s\t%s\n' "$name" "$((port - BASE))"
        done
        exit 0
      fi
    done
    exit 1
    ;;
  *)
    echo "usage: $0 start|stop|kill N|restart N|leader QUEUE|members QUEUE|queues|connections" >&2
    exit 2
    ;;
esac
