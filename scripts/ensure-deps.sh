#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test sentinel-gateway (cmake for pingora's
# zlib-ng; PostgreSQL if there is none), and makes sure a PostgreSQL answers on
# ${PGHOST:-127.0.0.1}:${PGPORT:-5432}. Idempotent; prints what it does.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "ensure-deps: need root to run: $*" >&2; return 1; fi
}

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v pg_isready >/dev/null || missing+=(postgresql postgresql-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-deps: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if pg_isready -q -h "$PGHOST" -p "$PGPORT"; then
  exit 0
fi
echo "ensure-deps: PostgreSQL is not answering on $PGHOST:$PGPORT; starting the local cluster"
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -z "$(ls /etc/postgresql/"$version" 2>/dev/null)" ]; then
    as_root pg_createcluster "$version" main --start -- --auth-local=trust --auth-host=trust >/dev/null
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
for _ in $(seq 1 30); do
  pg_isready -q -h "$PGHOST" -p "$PGPORT" && exit 0
  sleep 1
done
echo "ensure-deps: PostgreSQL did not come up on $PGHOST:$PGPORT" >&2
exit 1
