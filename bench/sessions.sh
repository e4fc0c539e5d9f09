#!/usr/bin/env bash
# Sessions, measured in one run:
# - refresh: POST /auth/refresh with rotation (every request rotates a session's token; 96
#   sessions, so no two requests in flight share one) at 8 and 64 connections, beside the seed's
#   FastAPI backend on GET /auth/users/me (its cheapest authenticated call) when SEED_DIR holds
#   a checkout of it;
# - the protected proxied route with a session's token, against the same route on a build
#   without session checks (BASELINE_BIN, e.g. a build of the commit before sessions), rounds
#   interleaved;
# - revocation: logout on instance A until instance B refuses the token, 100 trials;
# - password reset: 200 requests for a known and 200 for an unknown address, same answer and
#   how alike their latencies are.
#
#   bench/sessions.sh [seconds]                    (default 10 per measurement)
#   BASELINE_BIN=path bench/sessions.sh            the gateway without session checks
#   SEED_DIR=path bench/sessions.sh                the seed backend, for its /auth/users/me
#   ROUNDS=3 bench/sessions.sh                     proxied-route rounds (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
OUT=target/bench/sessions
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.toml "$OUT"/*.log "$OUT"/tokens

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bins
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
PASSWORD="BenchPassword123!"
UP=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/nginx.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"

for db in sg_sessions_bench sg_sessions_base seed_sessions_bench; do
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db" >/dev/null 2>&1 || true
  createdb -h 127.0.0.1 -U postgres "$db"
done

# gateway NAME BINARY DATABASE PORT [LIMITS] — a gateway with one protected route to nginx;
# LIMITS are extra [rate_limit] keys and tables (those an older baseline build does not know).
gateway() {
  cat >"$OUT/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$4"
threads = 2
[database]
url = "postgres://postgres@127.0.0.1:5432/$3"
[auth]
secret_key = "$SECRET"
[rate_limit]
login_per_ip_per_minute = 100000000
login_per_account_per_minute = 100000000
register_per_ip_per_minute = 100000000
${5:-}
[log]
level = "warn"
access_log = false
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
  start "$OUT/$1.log" "$2" --config "$OUT/$1.toml"
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

GW=$(port); GW_B=$(port)
# Reset requests and refreshes are limited per address, and every request here comes from one.
RESET_LIMIT="password_reset_per_ip_per_minute = 100000000
refresh_per_ip_per_minute = 100000000"
# Each gateway's admin listener (metrics) on a port of its own.
admin() { printf '%s\n[admin]\nlisten = "127.0.0.1:%s"\n' "$RESET_LIMIT" "$(port)"; }
gateway gateway target/release/sentinel-gateway sg_sessions_bench "$GW" "$(admin)"
gateway gateway-b target/release/sentinel-gateway sg_sessions_bench "$GW_B" "$(admin)"
wait_up "http://127.0.0.1:$GW" /ready
curl -sf -X POST "http://127.0.0.1:$GW/auth/register" -H 'content-type: application/json' \
  -d "{\"email\":\"bench@example.com\",\"password\":\"$PASSWORD\"}" >/dev/null
wait_up "http://127.0.0.1:$GW_B" /ready

# 96 sessions to rotate (within auth.max_sessions_per_user, 100, so that none is ended).
for _ in $(seq 1 96); do
  curl -sf -X POST "http://127.0.0.1:$GW/auth/token" -d username=bench@example.com \
    -d "password=$PASSWORD" | json_field refresh_token >>"$OUT/tokens"
done

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10}
       END {printf "%s %s %d\n", rps, p99, err}'
}
rows=()
for c in 8 64; do
  REFRESH_TOKENS="$OUT/tokens" wrk -t1 -c"$c" -d"${DURATION}s" --latency -s bench/refresh.lua \
    "http://127.0.0.1:$GW/auth/refresh" >"$OUT/refresh-$c.txt"
  rows+=("gateway POST_/auth/refresh $c $(summarize <"$OUT/refresh-$c.txt")")
  # The chain goes on from the tokens the last run handed out: take them from the database's
  # view by logging in afresh instead (the Lua queue is gone).
  : >"$OUT/tokens"
  for _ in $(seq 1 96); do
    curl -sf -X POST "http://127.0.0.1:$GW/auth/token" -d username=bench@example.com \
      -d "password=$PASSWORD" | json_field refresh_token >>"$OUT/tokens"
  done
done

if [ -n "${SEED_DIR:-}" ] && [ -d "$SEED_DIR" ]; then
  SEED=$(port)
  start_seed "$SEED_DIR" "$SEED" seed_sessions_bench "$SECRET" "$OUT"
  wait_up "http://127.0.0.1:$SEED"
  SEED_TOKEN=$(curl -sf -X POST "http://127.0.0.1:$SEED/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@example.com\",\"password\":\"$PASSWORD\"}" | json_field access_token)
  for c in 8 64; do
    wrk -t2 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer $SEED_TOKEN" \
      "http://127.0.0.1:$SEED/auth/users/me" >"$OUT/seed-me-$c.txt"
    rows+=("seed GET_/auth/users/me $c $(summarize <"$OUT/seed-me-$c.txt")")
  done
fi

# The protected route: with session checks (this build, a session's token) and without (the
# baseline build), interleaved rounds, the proxies' worker threads alike.
if [ -n "${BASELINE_BIN:-}" ]; then
  BASE=$(port)
  gateway baseline "$BASELINE_BIN" sg_sessions_base "$BASE"
  wait_up "http://127.0.0.1:$BASE" /ready
  BASE_TOKEN=$(curl -sf -X POST "http://127.0.0.1:$BASE/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@example.com\",\"password\":\"$PASSWORD\"}" | json_field access_token)
fi
# A session of its own, started after the logins above (which end the least recently used).
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$GW/auth/token" -d username=bench@example.com \
  -d "password=$PASSWORD" | json_field access_token)
for r in $(seq 1 "$ROUNDS"); do
  wrk -t1 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$GW/api/x" >"$OUT/proxied-sessions-$r.txt"
  rows+=("gateway GET_/api/x_(sessions)_r$r 64 $(summarize <"$OUT/proxied-sessions-$r.txt")")
  if [ -n "${BASELINE_BIN:-}" ]; then
    wrk -t1 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $BASE_TOKEN" \
      "http://127.0.0.1:$BASE/api/x" >"$OUT/proxied-baseline-$r.txt"
    rows+=("baseline GET_/api/x_r$r 64 $(summarize <"$OUT/proxied-baseline-$r.txt")")
  fi
done

python3 bench/reset_timing.py "http://127.0.0.1:$GW" bench@example.com 200 >"$OUT/reset-timing.txt"

python3 bench/revocation.py "http://127.0.0.1:$GW" "http://127.0.0.1:$GW_B" bench@example.com \
  "$PASSWORD" 100 >"$OUT/revocation.txt"

echo
printf '%-10s %-32s %5s %12s %10s %7s\n' who measurement conns "req/s" p99 errors
for row in "${rows[@]}"; do
  read -r who what c rps p99 err <<<"$row"
  printf '%-10s %-32s %5s %12s %10s %7s%s\n' "$who" "${what//_/ }" "$c" "$rps" "$p99" "$err" "$(mark "$err")"
  checked "$who ${what//_/ } $c" "$err"
done
python3 - "${rows[@]}" <<'PY'
import statistics, sys
rows = [r.split() for r in sys.argv[1:]]
with_s = [float(r[3]) for r in rows if r[1].startswith("GET_/api/x_(sessions)")]
base = [float(r[3]) for r in rows if r[0] == "baseline"]
if with_s and base:
    print(f"proxied route with session checks / without: {statistics.median(with_s) / statistics.median(base):.2f}x "
          f"(medians {statistics.median(with_s):.0f} / {statistics.median(base):.0f} req/s)")
    print("per round: " + " ".join(f"{a / b:.2f}" for a, b in zip(with_s, base)))
PY
cat "$OUT/revocation.txt"
cat "$OUT/reset-timing.txt"
verdict
