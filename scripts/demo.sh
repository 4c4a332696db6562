#!/usr/bin/env bash
# The demo fleet, end to end: services up, database migrated, two worker replicas, a handful of
# demo events (one through the HTTP API of `warren console`), the runs table, one run's timeline,
# then a clean stop.
#
# It uses its own database (warren_demo, reset on every run) and namespace (demo), so it never
# touches a real deployment's data.
set -euo pipefail
cd "$(dirname "$0")/.."

export WARREN_AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export WARREN_DATABASE_URL="${WARREN_DEMO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/warren_demo}"
export WARREN_NAMESPACE=demo

scripts/services.sh
cargo build --bin warren
warren=target/debug/warren

psql_url="${WARREN_DATABASE_URL%/*}/postgres"
if command -v psql >/dev/null; then
  psql -q "$psql_url" -c "DROP DATABASE IF EXISTS warren_demo WITH (FORCE)" >/dev/null
fi
"$warren" migrate
# Dead letters left by an earlier demo run would confuse this one's counts.
for task in player.dump video.process; do "$warren" dlq purge "$task" --yes >/dev/null 2>&1 || true; done

logs=$(mktemp -d)
pids=()
stop_workers() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_workers EXIT

port=9464
for replica in a b; do
  "$warren" worker --worker-id "demo-$replica" --http-addr "127.0.0.1:$port" \
    >"$logs/worker-$replica.log" 2>&1 &
  pids+=($!)
  port=$((port + 1))
done
# The console and HTTP API (docs/api.md), with a token for this demo.
console_addr="${WARREN_DEMO_CONSOLE_ADDR:-127.0.0.1:8080}"
token=$("$warren" tokens create demo --scopes read,publish,admin 2>/dev/null)
"$warren" console --addr "$console_addr" >"$logs/console.log" 2>&1 &
pids+=($!)
# Wait until both replicas consume.
for _ in $(seq 1 60); do
  consuming=$("$warren" tasks --json 2>/dev/null | grep -c '"consumers": 2' || true)
  [ "$consuming" = 2 ] && break
  sleep 0.5
done

uuid() { cat /proc/sys/kernel/random/uuid; }
video() { # quality message-id
  printf '{"job_id":"%s","job_run_id":"%s","workspace_id":"%s","user_id":"%s","transcript_quality":"%s"}' \
    "$(uuid)" "$(uuid)" "$(uuid)" "$(uuid)" "$1"
}
echo "== publishing demo events"
"$warren" publish video.process --message-id demo-video-1 --data "$(video normal)"
"$warren" publish video.process --message-id demo-video-2 --data "$(video normal)"
"$warren" publish video.process --message-id demo-video-low --data "$(video low)"
"$warren" publish player.dump --message-id demo-player-1 --data '{"playerId":"p-1001"}'
"$warren" publish player.dump --message-id demo-player-missing --data '{"playerId":"missing-player"}'
for i in $(seq 1 10); do printf '{"playerId":"bulk-%s"}\n' "$i"; done | "$warren" publish player.dump
expected=15
if command -v curl >/dev/null; then
  echo "== publishing one over HTTP: POST http://$console_addr/api/v1/events/player.dump"
  for _ in $(seq 1 40); do curl -fsS "http://$console_addr/healthz" >/dev/null 2>&1 && break; sleep 0.25; done
  curl -fsS -X POST "http://$console_addr/api/v1/events/player.dump" \
    -H "Authorization: Bearer $token" -H 'Warren-Message-Id: demo-player-http' \
    -d '{"playerId":"p-2002"}'
  echo
  expected=16
fi

for _ in $(seq 1 120); do
  finished=$("$warren" runs list --limit 1000 --json | grep -cE '"status": "(succeeded|halted|dead)"' || true)
  [ "$finished" -ge "$expected" ] && break
  sleep 0.5
done

echo; echo "== runs"
"$warren" runs list --limit 50
echo; echo "== one video run"
"$warren" runs show demo-video-1
echo; echo "== tasks"
"$warren" tasks

echo; echo "== replica demo-a's metrics (http://127.0.0.1:9464/metrics), an excerpt"
if command -v curl >/dev/null; then
  curl -fsS http://127.0.0.1:9464/readyz || true
  curl -fsS http://127.0.0.1:9464/metrics | grep -E '^warren_runs_(received|succeeded|halted|dead_lettered)_total' || true
fi

if command -v curl >/dev/null; then
  echo; echo "== the same run through the HTTP API (the console at http://$console_addr shows it too)"
  run=$(curl -fsS -H "Authorization: Bearer $token" "http://$console_addr/api/v1/runs/search?q=demo-player-http")
  echo "$run"
fi

echo; echo "== stopping the replicas and the console"
stop_workers
trap - EXIT
grep -h "worker stopped" "$logs"/worker-*.log || true
echo "demo finished: $finished of $expected runs finished; worker logs in $logs"
[ "$finished" -ge "$expected" ]
