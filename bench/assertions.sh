#!/usr/bin/env bash
# What signing X-Identity-Assertion costs the proxied route: one gateway build on a protected
# route to a fixed-response nginx, three ways, in the same run:
#   off    [identity_assertion] enabled = false (no header)
#   reuse  the default: one assertion per user, session and route, reused for 5 s
#   sign   reuse_seconds = 0: an Ed25519 signature on every request
#
#   bench/assertions.sh [seconds-per-run] [threads]     (defaults 10 and 1)
#
# Each runs ROUNDS times (default 5) at 64 connections (wrk) with one user's token, the order
# rotating each round, the gateways pinned to the last THREADS cores and wrk and nginx to the
# others. Printed: each round's req/s, the ratios to `off`, and their medians (target for the
# default: at least 0.95, i.e. no more than 5% lost).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
THREADS=${2:-1}
ROUNDS=${ROUNDS:-5}
OUT=target/bench/assertions
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

UP=$(port); OFF=$(port); REUSE=$(port); SIGN=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/upstream.log" "${on_load[@]}" "$NGINX" -c "$PWD/$OUT/upstream.conf"
dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_assertions_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_assertions_bench

gateway() { # NAME PORT ASSERTION-KEYS
  cat >"$OUT/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"
threads = $THREADS
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_assertions_bench"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[admin]
listen = ""
[log]
level = "warn"
access_log = false
[identity_assertion]
$3
[[routes]]
prefix = "/bench/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
  start "$OUT/$1.log" "${on_proxy[@]}" target/release/sentinel-gateway --config "$OUT/$1.toml"
}
gateway off "$OFF" "enabled = false"
gateway reuse "$REUSE" "reuse_seconds = 5"
gateway sign "$SIGN" "reuse_seconds = 0"
for p in $OFF $REUSE $SIGN; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/ready" && break; sleep 0.1; done
done
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$OFF/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"BenchPassword123!"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
AUTH="Authorization: Bearer $TOKEN"
for p in $OFF $REUSE $SIGN; do
  "${on_load[@]}" wrk -t1 -c8 -d2s "http://127.0.0.1:$p/bench/x" -H "$AUTH" >/dev/null
done

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10}
       END {printf "%s %s %d\n", rps, p99, err}'
}
run() { # NAME PORT ROUND
  "${on_load[@]}" wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$2/bench/x" -H "$AUTH" \
    >"$OUT/wrk-$1-$3.txt"
  echo "$1 $3 $(summarize <"$OUT/wrk-$1-$3.txt")"
}
port_of() { case $1 in off) echo "$OFF" ;; reuse) echo "$REUSE" ;; sign) echo "$SIGN" ;; esac; }
rows=()
for round in $(seq 1 "$ROUNDS"); do
  case $((round % 3)) in
    1) order="off reuse sign" ;;
    2) order="reuse sign off" ;;
    0) order="sign off reuse" ;;
  esac
  for name in $order; do
    rows+=("$(run "$name" "$(port_of "$name")" "$round")")
  done
done

echo "64 connections, $THREADS gateway thread(s), $ROUNDS rounds of ${DURATION}s"
python3 - "${rows[@]}" <<'PY'
import sys
rows = [r.split() for r in sys.argv[1:]]
by = {}
for name, rnd, rps, p99, err in rows:
    by.setdefault(int(rnd), {})[name] = (float(rps), p99, int(err))
ratios = {"reuse": [], "sign": []}
print(f"{'round':>5} {'off req/s':>10} {'reuse':>8} {'sign':>8} {'reuse/off':>10} {'sign/off':>9} errors")
for rnd in sorted(by):
    r = by[rnd]
    for k in ratios:
        ratios[k].append(r[k][0] / r["off"][0])
    print(f"{rnd:5} {r['off'][0]:10.0f} {r['reuse'][0]:8.0f} {r['sign'][0]:8.0f} "
          f"{ratios['reuse'][-1]:10.3f} {ratios['sign'][-1]:9.3f} "
          f"{sum(v[2] for v in r.values())}"
          + ("  <- FAILED: not a result" if sum(v[2] for v in r.values()) else ""))
for k, v in ratios.items():
    v.sort()
    print(f"median {k}/off: {v[len(v) // 2]:.3f}" + ("   (target: at least 0.95)" if k == "reuse" else ""))
PY
check_rows "${rows[@]}"
verdict
