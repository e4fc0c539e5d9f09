#!/usr/bin/env bash
# Benchmark of the seed API: sentinel-gateway against the seed's FastAPI backend, same machine,
# same run. Measures requests/s and p99 of GET /auth/users/me and POST /auth/token with wrk at
# 8 and 64 connections, plus the argon2 verification ceiling of this machine; and, beside
# them, the gateway's protected proxied route (to an nginx answering "ok") with the same
# token, which GET /auth/users/me is held to: at least 0.8x of it (both answer from the same
# user-state cache).
#
#   bench/auth.sh [seconds-per-run]        (default 10)
#
# Needs PostgreSQL on 127.0.0.1:5432 (scripts/ensure-deps.sh), wrk, python3 with venv; installs
# wrk and the seed's Python requirements (into target/bench/) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
GW_PORT=${GW_PORT:-18300}
SEED_PORT=${SEED_PORT:-18400}
# A checkout of the seed's FastAPI backend (its main.py and requirements.txt).
SEED_DIR=${SEED_DIR:-../shared/peers/seed_fastapi}
if [ ! -d "$SEED_DIR" ]; then
  echo "bench/auth.sh: no seed backend at $SEED_DIR: set SEED_DIR to a checkout of it" >&2
  exit 1
fi
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
PASSWORD="BenchPassword123!"
OUT=target/bench
mkdir -p "$OUT"

scripts/ensure-deps.sh


source bench/lib.sh
install_missing wrk nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
UP=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/nginx.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"

for db in sg_bench seed_bench; do
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db"
  createdb -h 127.0.0.1 -U postgres "$db"
done

cargo build --release --quiet --bin sentinel-gateway --example hash_rate
# The login limits are lifted: this measures how fast logins are served, not refused.
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW_PORT"
threads = 2
[database]
url = "postgres://postgres@127.0.0.1/sg_bench"
[rate_limit]
login_per_ip_per_minute = 1000000
login_per_account_per_minute = 1000000
register_per_ip_per_minute = 1000000
# The login runs start a session per request for the one account; the measured token's
# session must not be the least recently used one they end.
[auth]
max_sessions_per_user = 10000
[admin]
listen = "127.0.0.1:$(port)"
[log]
level = "warn"
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
start "$OUT/gateway.log" env -i PATH="$PATH" SECRET_KEY="$SECRET" \
  target/release/sentinel-gateway --config "$OUT/gateway.toml"

start_seed "$SEED_DIR" "$SEED_PORT" seed_bench "$SECRET" "$OUT"

token_for() { # base -> registers bench@example.com, prints a token
  curl -sf -X POST "$1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@example.com\",\"password\":\"$PASSWORD\",\"full_name\":\"Bench\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

declare -A BASE=([gateway]="http://127.0.0.1:$GW_PORT" [seed]="http://127.0.0.1:$SEED_PORT")
declare -A TOKEN
# The gateway answers /health at once, /ready once its database is migrated.
declare -A READY=([gateway]=/ready [seed]=/health)
for who in gateway seed; do wait_up "${BASE[$who]}" "${READY[$who]}"; TOKEN[$who]=$(token_for "${BASE[$who]}"); done

# wrk output -> "req/s p99 errors"
summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10} END {printf "%s %s %d\n", rps, p99, err}'
}

results=()
run() { # who endpoint conns
  local who=$1 ep=$2 c=$3 out
  if [ "$ep" = me ]; then
    out=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer ${TOKEN[$who]}" "${BASE[$who]}/auth/users/me")
  elif [ "$ep" = proxied ]; then
    out=$(wrk -t2 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer ${TOKEN[$who]}" "${BASE[$who]}/api/x")
  else
    out=$(BENCH_USER=bench@example.com BENCH_PASSWORD="$PASSWORD" wrk -t2 -c"$c" -d"${DURATION}s" --latency --timeout 10s -s bench/login.lua "${BASE[$who]}/auth/token")
  fi
  echo "$out" >"$OUT/wrk-$who-$ep-$c.txt"
  results+=("$who $ep $c $(echo "$out" | summarize)")
  checked "$who $ep $c" "$(echo "$out" | summarize | awk '{print $3}')"
}

# 8 connections first: the seed collapses at 64 (pool exhaustion) and takes a while to recover.
for c in 8 64; do
  run gateway proxied "$c"
  for ep in me token; do for who in gateway seed; do run "$who" "$ep" "$c"; done; done
done
ceiling=$(target/release/examples/hash_rate 5)

printf '\n%-8s %-26s %5s %12s %10s %8s\n' who endpoint conns "req/s" p99 errors
for r in "${results[@]}"; do
  read -r who ep c rps p99 err <<<"$r"
  case $ep in me) name="GET /auth/users/me" ;; proxied) name="GET /api/x (proxied)" ;; *) name="POST /auth/token" ;; esac
  printf '%-8s %-26s %5s %12s %10s %8s%s\n' "$who" "$name" "$c" "$rps" "$p99" "$err" "$(mark "$err")"
done
echo
python3 - "$ceiling" "${results[@]}" <<'PY'
import sys
ceiling = float(sys.argv[1])
rows = {}
for r in sys.argv[2:]:
    who, ep, c, rps, p99, err = r.split()
    rows[(who, ep, c)] = float(rps)
for c in ("8", "64"):
    print(f"users/me gateway/seed at {c} connections: {rows[('gateway','me',c)] / max(rows[('seed','me',c)], 0.01):.1f}x")
for c in ("8", "64"):
    print(f"users/me / the proxied route at {c} connections: {rows[('gateway','me',c)] / rows[('gateway','proxied',c)]:.2f}x (target: at least 0.8)")
for c in ("8", "64"):
    print(f"login at {c} connections: {rows[('gateway','token',c)]:.1f}/s = {rows[('gateway','token',c)] / ceiling:.0%} of the argon2 ceiling ({ceiling:.1f} verifications/s on all cores)")
PY
verdict
