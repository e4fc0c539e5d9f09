#!/usr/bin/env bash
# What request metrics cost the proxied route: the same gateway build on a protected route to a
# fixed-response nginx, with its admin listener (request counts and duration histograms on)
# and without it (`[admin] listen = ""`: nothing counted per request), in the same run.
#
#   bench/metrics.sh [seconds-per-run] [threads]     (defaults 10 and 1)
#
# The two run ROUNDS times (default 5), alternating which goes first, at 64 connections (wrk),
# the gateways pinned to the last THREADS cores and wrk and nginx to the others. Printed: each
# round's req/s and on/off ratio, and the median ratio. Prometheus is scraped once a second
# during every run with metrics on, as it would be in production. For a deterministic figure,
# run bench/proxy-instructions.sh with METRICS=on and METRICS=off (instructions per request).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
THREADS=${2:-1}
ROUNDS=${ROUNDS:-5}
OUT=target/bench/metrics
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bins

CORES=$(nproc)
on_proxy=()
on_load=()
if [ "$CORES" -gt "$THREADS" ]; then
  on_proxy=(taskset -c "$((CORES - THREADS))-$((CORES - 1))")
  on_load=(taskset -c "0-$((CORES - THREADS - 1))")
fi

UP=$(port); ON=$(port); OFF=$(port); ADMIN=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/upstream.log" "${on_load[@]}" "$NGINX" -c "$PWD/$OUT/upstream.conf"
dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_metrics_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_metrics_bench

gateway() { # NAME PORT ADMIN_LISTEN
  cat >"$OUT/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"
threads = $THREADS
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_metrics_bench"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[admin]
listen = "$3"
[log]
level = "warn"
access_log = false
[[routes]]
prefix = "/bench/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
  start "$OUT/$1.log" "${on_proxy[@]}" target/release/sentinel-gateway --config "$OUT/$1.toml"
}
gateway on "$ON" "127.0.0.1:$ADMIN"
gateway off "$OFF" ""
for p in $ON $OFF; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/ready" && break; sleep 0.1; done
done
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$ON/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"BenchPassword123!"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
AUTH="Authorization: Bearer $TOKEN"
for p in $ON $OFF; do
  "${on_load[@]}" wrk -t1 -c8 -d2s "http://127.0.0.1:$p/bench/x" -H "$AUTH" >/dev/null
done

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10}
       END {printf "%s %s %d\n", rps, p99, err}'
}
run() { # NAME PORT ROUND
  local scraper=
  if [ "$1" = on ]; then
    (while true; do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/metrics"; sleep 1; done) &
    scraper=$!
  fi
  "${on_load[@]}" wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$2/bench/x" -H "$AUTH" \
    >"$OUT/wrk-$1-$3.txt"
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
  echo "$1 $3 $(summarize <"$OUT/wrk-$1-$3.txt")"
}
rows=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="on off"; else order="off on"; fi
  for name in $order; do
    if [ "$name" = on ]; then p=$ON; else p=$OFF; fi
    rows+=("$(run "$name" "$p" "$round")")
  done
done
curl -sf "http://127.0.0.1:$ADMIN/metrics" >"$OUT/last-scrape.txt"

echo "64 connections, $THREADS gateway thread(s), $ROUNDS rounds of ${DURATION}s"
python3 - "${rows[@]}" <<'PY'
import sys
rows = [r.split() for r in sys.argv[1:]]
by = {}
for name, rnd, rps, p99, err in rows:
    by.setdefault(int(rnd), {})[name] = (float(rps), p99, int(err))
ratios = []
print(f"{'round':>5} {'on req/s':>10} {'p99':>8} {'off req/s':>10} {'p99':>8} {'on/off':>7} errors")
for rnd in sorted(by):
    on, off = by[rnd]["on"], by[rnd]["off"]
    ratios.append(on[0] / off[0])
    print(f"{rnd:5} {on[0]:10.0f} {on[1]:>8} {off[0]:10.0f} {off[1]:>8} {ratios[-1]:7.3f} {on[2] + off[2]}"
          + ("  <- FAILED: not a result" if on[2] + off[2] else ""))
ratios.sort()
print(f"median on/off ratio: {ratios[len(ratios) // 2]:.3f}   (target: at least 0.95)")
PY
check_rows "${rows[@]}"
verdict
