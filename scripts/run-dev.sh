#!/usr/bin/env bash
# Runs sentinel-gateway on this machine for trying it out: makes sure PostgreSQL is up, creates
# the `sentinelshield` database if needed, keeps a random development secret in target/dev/,
# starts the demo upstream on 127.0.0.1:9000 (the routes /api/ and /public/ of
# conf/gateway.toml point there) and serves on :8000 (override with SENTINEL_LISTEN).
# Ctrl-C stops both.
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

if ! command -v cargo >/dev/null; then
  echo "run-dev: cargo not found: install a Rust toolchain (https://rustup.rs) and try again" >&2
  exit 1
fi
echo "run-dev: building (the first build compiles every dependency: about 12 minutes on 2 cores)"
cargo build --release --bins
upstream_pid=
if (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null; then
  echo "run-dev: something already listens on 127.0.0.1:9000; using it as the upstream"
else
  target/release/demo-upstream 127.0.0.1:9000 &
  upstream_pid=$!
fi
trap '[ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null' EXIT
target/release/sentinel-gateway --config conf/gateway.toml "$@"
