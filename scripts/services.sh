#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432) are reachable.
# Reuses them when they already answer; otherwise starts them, installing them from Debian's
# packages first on a machine that has neither (needs root). Idempotent; safe to run anytime.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  for _ in $(seq 1 "$2"); do
    port_open "$1" && return 0
    sleep 1
  done
  log "$3 did not come up on port $1 within $2 s"
  return 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1
  fi
}

apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then log "PostgreSQL is up"; return; fi
  local installed_now=
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql
    installed_now=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$installed_now" ]; then
    # Local development only: let the local postgres user in over loopback without a password,
    # as the default WARREN_DATABASE_URL expects.
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 60 PostgreSQL
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ is up"; return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  # A node that runs with its application stopped (`rabbitmqctl stop_app`, as the fault suite
  # does, left so by an interrupted run) only needs the application started.
  as_root rabbitmqctl -q start_app >/dev/null 2>&1 || as_root rabbitmq-server -detached || true
  as_root rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  wait_port 5672 120 RabbitMQ
}

ensure_postgres
ensure_rabbitmq
