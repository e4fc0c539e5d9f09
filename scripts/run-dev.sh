#!/usr/bin/env bash
# Runs sentinel-gateway on this machine for trying it out: makes sure PostgreSQL is up, creates
# the database if needed, keeps a random development secret in target/dev/, starts the demo
# upstream (the routes /api/ and /public/ of conf/gateway.toml point to it) and serves on :8000.
# Ctrl-C stops both. Overrides, all optional:
#   SENTINEL_DEV_DB=name              the database to use (default sentinelshield)
#   SENTINEL_DEV_UPSTREAM_PORT=port   the demo upstream's port (default 9000; the routes follow)
#   SENTINEL_LISTEN=host:port         where the gateway listens (default 0.0.0.0:8000)
#   SENTINEL_DEV_BIN_DIR=dir          run the binaries in dir instead of building a release
#   DATABASE_URL, SECRET_KEY          as for the gateway itself
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
DB=${SENTINEL_DEV_DB:-sentinelshield}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@$PGHOST:$PGPORT/$DB}
if ! psql "postgres://postgres@$PGHOST:$PGPORT/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  createdb -h "$PGHOST" -p "$PGPORT" -U postgres "$DB"
  echo "run-dev: created database $DB"
fi

mkdir -p target/dev
if [ -z "${SECRET_KEY:-}" ]; then
  [ -s target/dev/secret ] || head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > target/dev/secret
  SECRET_KEY=$(cat target/dev/secret)
  export SECRET_KEY
fi
export SENTINEL_LOG_FORMAT=${SENTINEL_LOG_FORMAT:-text}
# Mail (verification and reset links) is written to this log rather than sent.
export SENTINEL_MAIL_TRANSPORT=${SENTINEL_MAIL_TRANSPORT:-log}

BIN=${SENTINEL_DEV_BIN_DIR:-target/release}
if [ -z "${SENTINEL_DEV_BIN_DIR:-}" ]; then
  if ! command -v cargo >/dev/null; then
    echo "run-dev: cargo not found: install a Rust toolchain (https://rustup.rs) and try again" >&2
    exit 1
  fi
  echo "run-dev: building (the first build compiles every dependency: about 12 minutes on 2 cores)"
  cargo build --release --bins
fi
# The demo upstream: on its port unless something else listens there. A demo upstream left
# running (it answers GET /__requests) is used as it is; anything else is not taken for one.
UPSTREAM_PORT=${SENTINEL_DEV_UPSTREAM_PORT:-9000}
CONFIG=conf/gateway.toml
if [ "$UPSTREAM_PORT" != 9000 ]; then
  CONFIG=target/dev/gateway.toml
  sed "s/127\.0\.0\.1:9000/127.0.0.1:$UPSTREAM_PORT/g" conf/gateway.toml >"$CONFIG"
fi
upstream_pid=
if (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null; then
  if curl -sf --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT/__requests" | grep -qE '^[0-9]+$'; then
    echo "run-dev: a demo upstream already runs on 127.0.0.1:$UPSTREAM_PORT; using it"
  else
    echo "run-dev: something else listens on 127.0.0.1:$UPSTREAM_PORT; set SENTINEL_DEV_UPSTREAM_PORT to a free port" >&2
    exit 1
  fi
else
  "$BIN/demo-upstream" "127.0.0.1:$UPSTREAM_PORT" &
  upstream_pid=$!
fi
trap '[ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null' EXIT
"$BIN/sentinel-gateway" --config "$CONFIG" "$@"
