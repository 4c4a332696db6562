#!/usr/bin/env bash
# Removes what an interrupted test run can leave on the shared broker and database, so that one
# killed run does not slow down or break the next: stray test worker processes, the queues and
# exchanges of test namespaces, test databases, and the short consumer_timeout the fault suite
# sets while it runs. Touches test names only (namespaces `t` + 12 hex digits, databases
# `warren_test_` + 12 hex digits). Run by scripts/test.sh before the suite; safe to run anytime
# no test is running.
set -euo pipefail

log() { printf 'clean: %s\n' "$*" >&2; }

if pkill -9 -f '/warren-test-worker( |$)' 2>/dev/null; then
  log "killed stray test workers"
fi

if command -v rabbitmqctl >/dev/null; then
  # The fault suite shortens it to 2 s for one scenario and restores it; a killed run does not.
  if rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).' 2>/dev/null | grep -q '{ok,2000}'; then
    rabbitmqctl -q eval 'application:set_env(rabbit, consumer_timeout, 1800000).' >/dev/null
    log "restored the broker's consumer_timeout"
  fi
  # One Erlang expression instead of one rabbitmqctl call (an Erlang VM start) per queue.
  sweep='
    Test = fun(Name) -> re:run(Name, "^t[0-9a-f]{12}\\.") =/= nomatch end,
    Qs = [rabbit_amqqueue:delete(Q, false, false, <<"warren-tests">>)
          || Q <- rabbit_amqqueue:list(), Test(element(4, amqqueue:get_name(Q)))],
    Xs = [rabbit_exchange:delete(element(2, X), false, <<"warren-tests">>)
          || X <- rabbit_exchange:list(), Test(element(4, element(2, X)))],
    {length(Qs), length(Xs)}.'
  if counts=$(rabbitmqctl -q eval "$sweep" 2>/dev/null) && [ "$counts" != "{0,0}" ]; then
    log "deleted stale test queues and exchanges $counts"
  fi
fi

pg_url=${WARREN_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432}
if command -v psql >/dev/null; then
  stale=$(psql "$pg_url/postgres" -Atc \
    "SELECT datname FROM pg_database WHERE datname ~ '^warren_test_[0-9a-f]{12}$'" 2>/dev/null || true)
  for db in $stale; do
    psql "$pg_url/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  [ -z "$stale" ] || log "dropped $(echo "$stale" | wc -w) stale test database(s)"
fi
