#!/usr/bin/env bash
# A Postgres primary with a synchronous streaming standby, both on this machine beside (never
# touching) the server on 5432: the primary on port BASE+1, the standby on BASE+2 (BASE
# defaults to 5490), data directories under DIR (default /tmp/warren-pg-failover). The fault
# suite's failover scenario drives it; it is also a way to try a failover by hand:
#
#   scripts/pg-standby.sh start            # primary + synchronous standby, replicating
#   WARREN_DATABASE_URL='postgres://postgres@127.0.0.1:5491,127.0.0.1:5492/warren?target_session_attrs=read-write' \
#     target/debug/warren worker
#   scripts/pg-standby.sh crash-primary    # the primary stops at once (pg_ctl -m immediate)
#   scripts/pg-standby.sh promote          # the standby becomes the primary
#   scripts/pg-standby.sh stop             # stop both and remove their data
#
# Needs root or the postgres user (Postgres refuses to run as root), and Debian's postgresql
# package (scripts/services.sh installs it).
set -euo pipefail

BASE=${WARREN_PG_FAILOVER_BASE_PORT:-5490}
DIR=${WARREN_PG_FAILOVER_DIR:-/tmp/warren-pg-failover}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PRIMARY=$((BASE + 1))
STANDBY=$((BASE + 2))

log() { printf 'pg-standby: %s\n' "$*" >&2; }

as_postgres() { # command...
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

ctl() { # data-directory args...
  local data=$1
  shift
  as_postgres "$BIN/pg_ctl" -D "$data" "$@"
}

case "${1:-}" in
  start)
    "$0" stop
    mkdir -p "$DIR"
    chown postgres:postgres "$DIR"
    as_postgres "$BIN/initdb" -D "$DIR/primary" -U postgres --auth=trust >/dev/null
    cat >>"$DIR/primary/postgresql.conf" <<EOF
port = $PRIMARY
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 5
# Every commit waits until the standby has it: what Warren acked survives a failover.
synchronous_standby_names = 'standby'
synchronous_commit = on
EOF
    ctl "$DIR/primary" start -w -l "$DIR/primary.log" >/dev/null
    as_postgres "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY" -U postgres -D "$DIR/standby" -R -X stream
    cat >>"$DIR/standby/postgresql.auto.conf" <<EOF
port = $STANDBY
primary_conninfo = 'host=127.0.0.1 port=$PRIMARY user=postgres application_name=standby'
EOF
    ctl "$DIR/standby" start -w -l "$DIR/standby.log" >/dev/null
    for _ in $(seq 1 100); do
      state=$(as_postgres "$BIN/psql" -h 127.0.0.1 -p "$PRIMARY" -U postgres -Atc \
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'" 2>/dev/null || true)
      if [ "$state" = sync ]; then
        log "primary on 127.0.0.1:$PRIMARY, synchronous standby on 127.0.0.1:$STANDBY"
        exit 0
      fi
      sleep 0.1
    done
    log "the standby never became synchronous; logs under $DIR"
    exit 1
    ;;
  crash-primary)
    ctl "$DIR/primary" stop -m immediate >/dev/null
    ;;
  promote)
    ctl "$DIR/standby" promote -w >/dev/null
    # The promoted standby inherited the primary's synchronous_standby_names: with no standby of
    # its own, every commit would wait for one forever. Failover tooling (Patroni, a managed
    # service) does this step; by hand, it is this one.
    as_postgres "$BIN/psql" -h 127.0.0.1 -p "$STANDBY" -U postgres -qAtc \
      "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >/dev/null
    ;;
  stop)
    for data in "$DIR/primary" "$DIR/standby"; do
      if [ -f "$data/postmaster.pid" ]; then ctl "$data" stop -m immediate >/dev/null 2>&1 || true; fi
    done
    rm -rf "$DIR"
    ;;
  *)
    echo "usage: $0 start|crash-primary|promote|stop" >&2
    exit 2
    ;;
esac
