#!/usr/bin/env bash
# Login flood: while 200 connections hammer POST /auth/token with wrong passwords, measure
# requests/s and p99 of a protected proxied route and of /health, against the same figures
# without the flood, in one run; and the gateway's peak RSS. The login limits are raised in
# this run's config, so that the flood reaches the password hashing (as a distributed attack
# would) instead of being answered 429.
#
#   bench/flood.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
OUT=target/bench/flood
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
UP=$(port); GW=$(port)

upstream_conf "$OUT/upstream.conf" "$UP"
dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_flood_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_flood_bench
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW"
threads = 2
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_flood_bench"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[rate_limit]
login_per_ip_per_minute = 100000000
login_per_account_per_minute = 100000000
register_per_ip_per_minute = 100000000
[log]
level = "warn"
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF

cargo build --release --quiet --bins
start "$OUT/nginx.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"
start "$OUT/gateway.log" target/release/sentinel-gateway --config "$OUT/gateway.toml"
GW_PID=${pids[1]}
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$GW/health" >/dev/null && break; sleep 0.1; done
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$GW/auth/register" -H 'content-type: application/json' \
  -d '{"email":"flood@example.com","password":"FloodPassword123!"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

summarize() { awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10} END {printf "%s %s %d\n", rps, p99, err}'; }
measure() { # label
  wrk -t1 -c32 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/api/x" >"$OUT/proxied-$1.txt" &
  local a=$!
  wrk -t1 -c8 -d"${DURATION}s" --latency "http://127.0.0.1:$GW/health" >"$OUT/health-$1.txt" &
  local b=$!
  wait $a $b
}

measure quiet
BENCH_USER=flood@example.com BENCH_PASSWORD=wrong-password \
  wrk -t2 -c200 -d"$((DURATION + 4))s" --latency --timeout 10s -s bench/login.lua "http://127.0.0.1:$GW/auth/token" >"$OUT/flood.txt" &
FLOOD=$!
sleep 2
measure flood
wait $FLOOD
PEAK=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")

echo
printf '%-22s %12s %10s %8s\n' measurement "req/s" p99 errors
for f in proxied-quiet proxied-flood health-quiet health-flood flood; do
  read -r rps p99 err < <(summarize <"$OUT/$f.txt")
  printf '%-22s %12s %10s %8s\n' "$f" "$rps" "$p99" "$err"
done
echo "flood answers: $(grep -E 'Non-2xx' "$OUT/flood.txt" | awk '{print $5}') non-2xx (401 for wrong passwords, 503 when the hashing queue is full)"
echo "gateway peak RSS: $((PEAK / 1024)) MiB"
