#!/usr/bin/env bash
# Proxy benchmark, all in one run on this machine: a small fixed response served by nginx, and
# requests/s, p99 and the proxy core's CPU time per request (user and kernel, from /proc/stat)
# at 64 connections (wrk) for
#   (a) the upstream directly,
#   (b) nginx and (c) HAProxy as plain reverse proxies, no auth,
#   (d) a bare Pingora passthrough proxy (examples/bare_proxy.rs: the framework's ceiling),
#   (d2) the same bare proxy with the gateway's own server settings (no work stealing, tokio
#        timers, no downstream modules): what (e) is against it is the cost of the gateway's
#        own work alone,
#   (d3) a passthrough written on pingora-core's HTTP/1 sessions without pingora-proxy
#        (examples/core_proxy.rs), with pingora's connection pool, and (d4) with a plain
#        per-thread list of idle upstream connections instead: the ceiling of a gateway that
#        replaced pingora-proxy's request path, and what pingora-core's codec alone costs,
#   (d5) a passthrough on hyper 1.x (examples/hyper_proxy.rs: hyper's server, hyper-util's
#        pooled client, a current-thread runtime per thread): the engine the design card
#        names, doing nothing but relaying,
#   (e) sentinel-gateway on a bearer-verified protected route,
#   (e2) the gateway's own decision (route, rules, token, user state, identity headers: the
#        very function (e) calls) on hyper's engine (examples/gateway_hyper.rs), same config,
#   (e3) sentinel-gateway itself with `server.http1_engine = "hyper"` (src/edge/h1.rs: the
#        same decision, hyper's codecs, pooled upstream connections, every production duty),
#   (f) the same as (e) with its access log on (the product default),
#   (g) HAProxy doing the nearest job natively: its jwt_verify checks the same bearer token
#       (HS256 with the gateway's secret, `exp` checked) and injects `sub` as X-User-Id,
# (b)-(g) on the same number of worker threads (THREADS, default 1).
#
#   bench/proxy.sh [seconds-per-run] [threads]
#
# Each setup runs ROUNDS times (default 3), the rounds interleaved (a b c d e ... f, f ... e d c b a,
# a b c ...), and the table shows each setup's median round: this machine's speed drifts by 10%
# and more within minutes, and back-to-back runs of one setup would carry that drift into the
# ratios. (d), (e) and (d2) run next to each other in every round; the medians of the per-round
# ratios (e)/(d) and (e)/(d2) are printed too.
#
# With 2+ cores the proxies under test share the last THREADS cores and wrk and the upstream
# the others (PIN=0 to let the scheduler mix them): on this 2-core box, unpinned runs measure
# mostly who wins the scheduler's favour against wrk and the upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${2:-1}
CONNS=${CONNS:-64}
OUT=target/bench/proxy
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx haproxy wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

UP=$(port); NG=$(port); HA=$(port); BARE=$(port); BARET=$(port); COREPOOL=$(port); CORESTASH=$(port)
GW=$(port); GWLOG=$(port); HAJWT=$(port); HYPER=$(port); GWHYPER=$(port); GWH1=$(port)
SECRET=bench-secret-0123456789abcdef0123456789abcdef

CORES=$(nproc)
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && [ "$CORES" -gt "$THREADS" ]; then
  PROXY_CPUS="$((CORES - THREADS))-$((CORES - 1))"
  LOAD_CPUS="0-$((CORES - THREADS - 1))"
  on_proxy=(taskset -c "$PROXY_CPUS")
  on_load=(taskset -c "$LOAD_CPUS")
else
  PIN=0
  on_proxy=()
  on_load=()
fi

started=0
service() { started=$((started + 1)); start "$OUT/service-$started.log" "$@"; }

upstream_conf "$OUT/upstream.conf" "$UP"
nginx_proxy_conf "$OUT/nginx.conf" "$NG" "$UP" "$THREADS"
haproxy_conf "$OUT/haproxy.cfg" "$HA" "$HAJWT" "$UP" "$THREADS" "$SECRET"

dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_proxy_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_proxy_bench
gateway_conf() { # port access_log [http1_engine]
  cat <<CONF
[server]
listen = "127.0.0.1:$1"
threads = $THREADS
http1_engine = "${3:-pingora}"
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_proxy_bench"
[auth]
secret_key = "$SECRET"
[log]
level = "info"
access_log = $2
[admin]
listen = "127.0.0.1:$(port)"
[[routes]]
prefix = "/bench/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
}
gateway_conf "$GW" false >"$OUT/gateway.toml"
gateway_conf "$GWLOG" true >"$OUT/gateway-log.toml"
gateway_conf "$GWHYPER" false >"$OUT/gateway-hyper.toml"
gateway_conf "$GWH1" false hyper >"$OUT/gateway-h1.toml"

cargo build --release --quiet --bins --example bare_proxy --example core_proxy --example hyper_proxy \
  --example gateway_hyper
service "${on_load[@]}" "$NGINX" -c "$PWD/$OUT/upstream.conf"
service "${on_proxy[@]}" "$NGINX" -c "$PWD/$OUT/nginx.conf"
service "${on_proxy[@]}" "$HAPROXY" -db -f "$OUT/haproxy.cfg"
service "${on_proxy[@]}" target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" "$THREADS"
service "${on_proxy[@]}" target/release/examples/bare_proxy "127.0.0.1:$BARET" "127.0.0.1:$UP" "$THREADS" tuned
service "${on_proxy[@]}" target/release/examples/core_proxy "127.0.0.1:$COREPOOL" "127.0.0.1:$UP" "$THREADS" pool
service "${on_proxy[@]}" target/release/examples/core_proxy "127.0.0.1:$CORESTASH" "127.0.0.1:$UP" "$THREADS" stash
service "${on_proxy[@]}" target/release/examples/hyper_proxy "127.0.0.1:$HYPER" "127.0.0.1:$UP" "$THREADS"
service "${on_proxy[@]}" target/release/sentinel-gateway --config "$OUT/gateway.toml"
service "${on_proxy[@]}" target/release/sentinel-gateway --config "$OUT/gateway-log.toml"
service "${on_proxy[@]}" target/release/sentinel-gateway --config "$OUT/gateway-h1.toml"

for p in $UP $NG $HA $HAJWT $BARE $BARET $COREPOOL $CORESTASH $HYPER $GW $GWLOG $GWH1; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
done
# The gateways take requests that need the database once it is migrated.
for p in $GW $GWLOG $GWH1; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/ready" && break; sleep 0.1; done
done
# (e2) migrates the same database: after the gateways have.
service "${on_proxy[@]}" target/release/examples/gateway_hyper "$OUT/gateway-hyper.toml"
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$GWHYPER/" && break; sleep 0.1; done
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$GW/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"BenchPassword123!"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -sf "http://127.0.0.1:$GW/bench/x" -H "Authorization: Bearer $TOKEN" >/dev/null

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} / 50%/ {p50=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10} END {printf "%s %s %s %d\n", rps, p50, p99, err}'
}
# The proxies' cores' time in clock ticks, as "user system" (system with irq and softirq): read
# before and after each run, it says where a proxy's time per request goes, user space against
# the kernel (the syscalls and the loopback network). Only with PIN=1, where nothing else runs
# on those cores.
proxy_ticks() {
  if [ "$PIN" != 1 ]; then echo "0 0"; return; fi
  awk -v first="$((CORES - THREADS))" '$1 ~ /^cpu[0-9]+$/ && substr($1, 4) + 0 >= first {
    u += $2 + $3; s += $4 + $7 + $8 } END { print u, s }' /proc/stat
}
rows=()
run() { # name url [header]
  local name=$1 url=$2 out before after
  shift 2
  before=$(proxy_ticks)
  out=$("${on_load[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
  after=$(proxy_ticks)
  echo "$out" >"$OUT/wrk-$name-$round.txt"
  rows+=("$name $before $after $(echo "$out" | summarize)")
}
# Every setup gets the very same requests, bearer token included.
AUTH="Authorization: Bearer $TOKEN"
setups=("a-upstream $UP" "b-nginx $NG" "c-haproxy $HA" "d-pingora-bare $BARE" "e-gateway $GW" "e3-gateway-h1-hyper $GWH1" "e2-gateway-hyper $GWHYPER"
  "d2-pingora-bare-tuned $BARET" "d3-pingora-core $COREPOOL" "d4-pingora-core-stash $CORESTASH"
  "d5-hyper $HYPER" "f-gateway-access-log $GWLOG" "g-haproxy-jwt $HAJWT")
for round in $(seq 1 "$ROUNDS"); do
  # Odd rounds a..f, even rounds f..a: a drift of the machine's speed within a round then
  # favours no setup over the others.
  order=("${setups[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#setups[@]} - 1; i >= 0; i--)); do order+=("${setups[$i]}"); done
  fi
  for setup in "${order[@]}"; do
    read -r name p <<<"$setup"
    run "$name" "http://127.0.0.1:$p/bench/x" -H "$AUTH"
  done
done

echo
if [ "$PIN" = 1 ]; then pinning="proxies on cpu $PROXY_CPUS, wrk and upstream on cpu $LOAD_CPUS"; else pinning="unpinned"; fi
echo "$CONNS connections, $THREADS proxy thread(s), $ROUNDS interleaved rounds of ${DURATION}s (median shown), $pinning"
DURATION=$DURATION python3 - "${rows[@]}" <<'PY'
import sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
import os
rows = [r.split() for r in sys.argv[1:]]
duration = float(os.environ["DURATION"])
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
runs = {}
for name, u0, s0, u1, s1, rps, p50, p99, err in rows:
    # The proxy cores' time per request, in microseconds (user, kernel).
    n = float(rps) * duration
    cpu = ((int(u1) - int(u0)) * tick_us / n, (int(s1) - int(s0)) * tick_us / n)
    runs.setdefault(name, []).append((float(rps), ms(p50), ms(p99), int(err), p50, p99, cpu))
print(f"{'setup':24} {'req/s':>10} {'p50':>9} {'p99':>9} {'errors':>7} {'us/req user+kernel':>19}   rounds (req/s)")
data = {}
for name, results in runs.items():
    ordered = sorted(results)
    median = ordered[len(ordered) // 2]
    data[name] = median[:3]
    errors = sum(r[3] for r in results)
    each = " ".join(f"{r[0]:.0f}" for r in results)
    user, kernel = median[6]
    print(f"{name:24} {median[0]:10.0f} {median[4]:>9} {median[5]:>9} {errors:>7} {user:9.1f} + {kernel:5.1f}   {each}"
          + ("  <- FAILED: not a result" if errors else ""))
e, d, b, c, a = data["e-gateway"], data["d-pingora-bare"], data["b-nginx"], data["c-haproxy"], data["a-upstream"]
f, d2 = data["f-gateway-access-log"], data["d2-pingora-bare-tuned"]
print(f"(e)/(d) throughput {e[0]/d[0]:.2f}x   (e)/(b) {e[0]/b[0]:.2f}x   (e)/(c) {e[0]/c[0]:.2f}x   (f)/(d) {f[0]/d[0]:.2f}x")
print(f"(e)/(d2) throughput {e[0]/d2[0]:.2f}x (against a bare proxy with the gateway's server settings)   (d2)/(d) {d2[0]/d[0]:.2f}x")
pairs = sorted(ge[0] / gd[0] for ge, gd in zip(runs["e-gateway"], runs["d-pingora-bare"]))
ratios = " ".join(f"{ge[0]/gd[0]:.2f}" for ge, gd in zip(runs["e-gateway"], runs["d-pingora-bare"]))
print(f"(e)/(d) round by round: {ratios}   median of the rounds' ratios {pairs[len(pairs) // 2]:.2f}")
pairs2 = sorted(ge[0] / gd[0] for ge, gd in zip(runs["e-gateway"], runs["d2-pingora-bare-tuned"]))
ratios2 = " ".join(f"{ge[0]/gd[0]:.2f}" for ge, gd in zip(runs["e-gateway"], runs["d2-pingora-bare-tuned"]))
print(f"(e)/(d2) round by round: {ratios2}   median of the rounds' ratios {pairs2[len(pairs2) // 2]:.2f}")
d3, d4 = data["d3-pingora-core"], data["d4-pingora-core-stash"]
print(f"below pingora-proxy: (d3)/(b) {d3[0]/b[0]:.2f}x  (d4)/(b) {d4[0]/b[0]:.2f}x  (d3)/(d2) {d3[0]/d2[0]:.2f}x  (d4)/(d3) {d4[0]/d3[0]:.2f}x")
g = data["g-haproxy-jwt"]
d5 = data["d5-hyper"]
print(f"hyper passthrough: (d5)/(b) nginx {d5[0]/b[0]:.2f}x  (d5)/(g) HAProxy jwt_verify {d5[0]/g[0]:.2f}x  (d5)/(d2) {d5[0]/d2[0]:.2f}x  (d5)/(d4) {d5[0]/d4[0]:.2f}x")
e2 = data["e2-gateway-hyper"]
pairs4 = sorted(x[0] / gg[0] for x, gg in zip(runs["e2-gateway-hyper"], runs["g-haproxy-jwt"]))
print(f"the decision on hyper: (e2)/(g) HAProxy jwt_verify {e2[0]/g[0]:.2f}x (rounds' median {pairs4[len(pairs4) // 2]:.2f})  (e2)/(e) {e2[0]/e[0]:.2f}x  (e2)/(d5) {e2[0]/d5[0]:.2f}x  (e2)/(b) nginx {e2[0]/b[0]:.2f}x")
pairs3 = sorted(ge[0] / gg[0] for ge, gg in zip(runs["e-gateway"], runs["g-haproxy-jwt"]))
print(f"(e)/(g) against HAProxy's jwt_verify: {e[0]/g[0]:.2f}x   median of the rounds' ratios {pairs3[len(pairs3) // 2]:.2f}")
e3 = data["e3-gateway-h1-hyper"]
pairs5 = sorted(x[0] / gg[0] for x, gg in zip(runs["e3-gateway-h1-hyper"], runs["g-haproxy-jwt"]))
ratios5 = " ".join(f"{x[0]/gg[0]:.2f}" for x, gg in zip(runs["e3-gateway-h1-hyper"], runs["g-haproxy-jwt"]))
print(f"the gateway on hyper: (e3)/(g) HAProxy jwt_verify {e3[0]/g[0]:.2f}x (rounds: {ratios5}; median {pairs5[len(pairs5) // 2]:.2f})  (e3)/(e) {e3[0]/e[0]:.2f}x  (e3)/(e2) {e3[0]/e2[0]:.2f}x  (e3)/(b) nginx {e3[0]/b[0]:.2f}x")
print(f"p99 added by the gateway over the bare proxy: {e[2]-d[2]:+.2f} ms; over the upstream: {e[2]-a[2]:+.2f} ms")
PY
check_rows "${rows[@]}"
verdict
