#!/usr/bin/env bash
# Login flood: while 200 connections hammer POST /auth/token with wrong passwords, measure
# requests/s, p99 and the maximum latency of a protected proxied route, of GET /auth/users/me
# (a database-backed own endpoint) and of /health, against the same figures without the
# flood, in one run; and the gateway's peak RSS. The login limits are raised in this run's
# config, so that the flood reaches the password hashing (as a distributed attack would)
# instead of being answered 429. Two cases: the default user-cache TTL (30 s) and a 1 s TTL,
# where the signed-in user's cached state falls due for refresh again and again during the
# flood.
#
#   bench/flood.sh [seconds]                 (default 10 per measurement)
#   THREADS=2 bench/flood.sh                 proxy threads (default 1)
#   GATEWAY_BIN=path bench/flood.sh          another build of the gateway (an older commit)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
THREADS=${THREADS:-1}
OUT=target/bench/flood
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bins
GATEWAY_BIN=${GATEWAY_BIN:-target/release/sentinel-gateway}
UP=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/nginx.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"

# wrk's output → "req/s p99 max errors"
summarize() {
  awk '/Requests\/sec/ {rps=$2} /^ +Latency +[0-9]/ {max=$4} / 99%/ {p99=$2}
       /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10}
       END {printf "%s %s %s %d\n", rps, p99, max, err}'
}

# run_case TTL — a gateway with this user-cache TTL on a fresh database: quiet, then flooded.
run_case() {
  local ttl=$1 gw db=sg_flood_bench
  gw=$(port)
  dropdb -h 127.0.0.1 -U postgres --if-exists --force $db >/dev/null 2>&1 || true
  createdb -h 127.0.0.1 -U postgres $db
  cat >"$OUT/gateway-ttl$ttl.toml" <<CONF
[server]
listen = "127.0.0.1:$gw"
threads = $THREADS
[database]
url = "postgres://postgres@127.0.0.1:5432/$db"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[rate_limit]
login_per_ip_per_minute = 100000000
login_per_account_per_minute = 100000000
register_per_ip_per_minute = 100000000
[proxy]
user_cache_ttl_seconds = $ttl
[admin]
listen = "127.0.0.1:$(port)"
[log]
level = "warn"
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
  start "$OUT/gateway-ttl$ttl.log" "$GATEWAY_BIN" --config "$OUT/gateway-ttl$ttl.toml"
  local gw_pid=${pids[-1]}
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$gw/ready" >/dev/null && break; sleep 0.1; done
  local token
  token=$(curl -sf -X POST "http://127.0.0.1:$gw/auth/register" -H 'content-type: application/json' \
    -d '{"email":"flood@example.com","password":"FloodPassword123!"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

  measure() { # label
    wrk -t1 -c32 -d"${DURATION}s" --latency --timeout 10s -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$gw/api/x" >"$OUT/ttl$ttl-proxied-$1.txt" &
    local a=$!
    wrk -t1 -c4 -d"${DURATION}s" --latency --timeout 10s -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$gw/auth/users/me" >"$OUT/ttl$ttl-me-$1.txt" &
    local b=$!
    wrk -t1 -c4 -d"${DURATION}s" --latency --timeout 10s "http://127.0.0.1:$gw/health" \
      >"$OUT/ttl$ttl-health-$1.txt" &
    local c=$!
    wait $a $b $c
  }
  measure quiet
  BENCH_USER=flood@example.com BENCH_PASSWORD=wrong-password \
    wrk -t2 -c200 -d"$((DURATION + 4))s" --latency --timeout 10s -s bench/login.lua \
    "http://127.0.0.1:$gw/auth/token" >"$OUT/ttl$ttl-flood.txt" &
  local flood=$!
  sleep 2
  measure flood
  wait $flood
  local peak
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$gw_pid/status")
  kill -TERM "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  for f in proxied-quiet proxied-flood me-quiet me-flood health-quiet health-flood flood; do
    read -r rps p99 max err < <(summarize <"$OUT/ttl$ttl-$f.txt")
    # The flood's own answers are 401s and 503s by design; every other row must have none.
    [ "$f" = flood ] && err=0
    checked "ttl ${ttl}s $f" "$err"
    printf '%-6s %-16s %10s %10s %10s %8s%s\n' "${ttl}s" "$f" "$rps" "$p99" "$max" "$err" "$(mark "$err")" \
      >>"$OUT/table.txt"
  done
  echo "ttl ${ttl}s: flood answers $(awk '/Non-2xx/ {print $5}' "$OUT/ttl$ttl-flood.txt") non-2xx" \
    "(401 for wrong passwords, 503 when the hashing queue is full); \
dependency-unavailable log lines: $(grep -c 'dependency unavailable' "$OUT/gateway-ttl$ttl.log" || true); \
peak RSS $((peak / 1024)) MiB" >>"$OUT/notes.txt"
}

run_case 30
run_case 1
echo
echo "gateway: $GATEWAY_BIN, $THREADS proxy thread(s), ${DURATION}s per measurement"
printf '%-6s %-16s %10s %10s %10s %8s\n' ttl measurement "req/s" p99 max errors
cat "$OUT/table.txt"
cat "$OUT/notes.txt"
verdict
