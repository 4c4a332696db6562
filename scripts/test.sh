#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against the real RabbitMQ and
# PostgreSQL (started if they are down), including a publisher written in Python with pika.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/clean-test-leftovers.sh

# The polyglot test publishes with Python's pika, in a virtualenv of its own.
venv=target/pyenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pika' 2>/dev/null; then
  echo "test: installing pika for the Python publisher test" >&2
  mkdir -p target
  if ! python3 -m venv "$venv" 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; fi
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check pika
fi
export WARREN_TEST_PYTHON="$PWD/$venv/bin/python"

# The observability tests scrape a worker with a real Prometheus server, and the deploy checks
# run promtool: both come from Debian's prometheus package.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "test: installing Prometheus (Debian package prometheus)" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The media-track example's steps run ffmpeg and ffprobe and read their requests with jq (the
# declared child-run tests use jq too).
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! command -v jq >/dev/null; then
  echo "test: installing ffmpeg and jq (Debian packages) for the media-track example" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg jq >/dev/null
fi
# The client modules for HTTP step endpoints test themselves with their own standard tools (no
# packages to install); `set -e` stops the suite when they fail.
if ! command -v node >/dev/null; then
  echo "test: installing Node.js (Debian package nodejs) for clients/node and the HTTP step tests" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
fi
# The buster example's steps keep their tables in Postgres through psql.
if ! command -v psql >/dev/null; then
  echo "test: installing psql (Debian package postgresql-client) for the buster example" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
fi
# The console's browser tests drive Debian's headless Chromium through its chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "test: installing Chromium and chromedriver (Debian packages) for the console's browser tests" >&2
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
node --test clients/node/test/
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s clients/python/tests

# Integration tests drive the real `warren` binary too.
cargo build --workspace --bins
cargo test --workspace "$@"
