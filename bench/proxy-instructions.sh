#!/usr/bin/env bash
# Deterministic companion to bench/proxy.sh: user-space instructions per proxied request for
# the bare Pingora passthrough (examples/bare_proxy.rs) and the gateway on a protected route,
# counted by valgrind's callgrind while wrk sends keep-alive requests through each. Unlike
# req/s on this noisy 2-core machine, the counts repeat to within about 1% from run to run,
# so an optimisation of a few hundred instructions per request is visible. Kernel time (the
# same for both: same syscalls) is not counted, so the ratio overstates the gateway's share.
#
#   bench/proxy-instructions.sh [seconds]      (default 10; ~1k req/s under valgrind)
#   HEADERS=browser bench/proxy-instructions.sh   requests carry a browser's dozen headers
#                                                 (default: wrk's Host plus the bearer token)
#   GATEWAY_BIN=path bench/proxy-instructions.sh  another build of the gateway (an older commit)
#   ACCESS_LOG=true bench/proxy-instructions.sh    with the access log on (the product default;
#                                                 the writer thread's work is counted too)
#   BARE_MODE=tuned bench/proxy-instructions.sh    the bare proxy with the gateway's server
#                                                 settings (see examples/bare_proxy.rs)
#   METRICS=off bench/proxy-instructions.sh        the gateway without its admin listener, so
#                                                 without request metrics (default: on)
#   ASSERTIONS=off|sign bench/proxy-instructions.sh  without X-Identity-Assertion, or with a
#                                                 signature per request (default: reuse, the
#                                                 product's default of one per user and route
#                                                 every 5 s)
#   RULES=five bench/proxy-instructions.sh       the route with five rules (a public path, an
#                                                 admin path, a denied network, a method rule,
#                                                 and the one that decides: a role the user
#                                                 holds); bench/rules.sh compares it to none
#   AAL2=true bench/proxy-instructions.sh        the bench user has a TOTP factor and the
#                                                 session used it (aal2; bench/mfa.sh compares)
#   ENGINE=pingora bench/proxy-instructions.sh   the gateway on its other HTTP/1 engine
#                                                 (server.http1_engine; hyper by default)
#   PEERS=true bench/proxy-instructions.sh         also count nginx as a reverse proxy, the
#                                                 passthrough on pingora-core without
#                                                 pingora-proxy (examples/core_proxy.rs, with
#                                                 pingora's pool and with a plain idle list)
#                                                 the passthrough on hyper 1.x
#                                                 (examples/hyper_proxy.rs), the gateway's
#                                                 decision on hyper (examples/gateway_hyper.rs)
#                                                 and HAProxy's jwt_verify doing the gateway's
#                                                 job natively (as in bench/proxy.sh's (g))
#
# Output: instructions per request for both, the difference, and the functions it goes to
# (exclusive instructions per request, gateway minus bare).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
OUT=target/bench/instructions
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx haproxy wrk valgrind
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
SECRET=bench-secret-0123456789abcdef0123456789abcdef
cargo build --release --quiet --bins --example bare_proxy --example core_proxy --example hyper_proxy \
  --example gateway_hyper

UP=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/upstream.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"
dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_instr_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_instr_bench

measure() { # name command...
  local name=$1 p=$2
  shift 2
  start "$OUT/$name.log" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$PWD/$OUT/callgrind-$name.out" "$@"
  # /ready: the gateway's database is migrated (the bare proxy passes it to nginx: 200 at once).
  # gateway_hyper and HAProxy serve no /ready: any answer will do.
  local borrowed=false
  case $name in gateway-hyper | haproxy-jwt) borrowed=true ;; esac
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$p/ready" && break
    [ "$borrowed" = true ] && curl -s -o /dev/null "http://127.0.0.1:$p/" && break
    sleep 0.2
  done
  local token
  if [ "$borrowed" = true ]; then
    # The gateway's token (same database and secret): these have no /auth endpoints.
    token=$(cat "$OUT/gateway.token")
  else
    token=$(curl -sf -X POST "http://127.0.0.1:$p/auth/register" -H 'content-type: application/json' \
      -d '{"email":"bench@example.com","password":"BenchPassword123!"}' |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null || echo none)
  fi
  [ "$name" = gateway ] && echo "$token" >"$OUT/gateway.token"
  local auth="Authorization: Bearer $token"
  if [ "$name" = gateway ] && [ "${AAL2:-false}" = true ]; then
    local enrol secret factor
    enrol=$(curl -sf -X POST "http://127.0.0.1:$p/auth/mfa/totp" -H "$auth")
    secret=$(echo "$enrol" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
    factor=$(echo "$enrol" | python3 -c 'import json,sys; print(json.load(sys.stdin)["factor_id"])')
    curl -sf -X POST "http://127.0.0.1:$p/auth/mfa/totp/$factor/activate" -H "$auth" \
      -H 'content-type: application/json' -d "{\"code\":\"$(totp_code "$secret")\"}" >/dev/null
    curl -sf "http://127.0.0.1:$p/auth/mfa" -H "$auth" | grep -q '"aal":"aal2"'
  fi
  if [ "$name" = gateway ] && [ "${RULES:-none}" = five ]; then
    "${GATEWAY_BIN:-target/release/sentinel-gateway}" --config "$OUT/gateway.toml" \
      users grant bench@example.com bench.reader >/dev/null
  fi
  local extra=()
  if [ "${HEADERS:-}" = browser ]; then
    extra=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
      -H "Accept: application/json, text/plain, */*" -H "Accept-Language: en-GB,en;q=0.9"
      -H "Accept-Encoding: gzip, deflate, br" -H "Origin: http://localhost:3000"
      -H "Referer: http://localhost:3000/dashboard" -H "Sec-Fetch-Mode: cors" -H "Sec-Fetch-Site: same-site"
      -H "Sec-Fetch-Dest: empty" -H "Cookie: theme=dark; _ga=GA1.1.123456789.1700000000"
      -H "Connection: keep-alive")
  fi
  # Warm caches, pools and the token cache first; count only the steady state.
  wrk -t1 -c4 -d2s "http://127.0.0.1:$p/bench/x" -H "$auth" "${extra[@]}" >/dev/null
  local vg=${pids[-1]}
  callgrind_control -i on "$vg" >/dev/null
  local out
  out=$(wrk -t1 -c4 -d"${DURATION}s" "http://127.0.0.1:$p/bench/x" -H "$auth" "${extra[@]}")
  callgrind_control -i off "$vg" >/dev/null
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  echo "$out" | awk '/requests in/ {print $1}' >"$OUT/$name.requests"
  echo "$out" | grep -q "Non-2xx" && { echo "$name: non-2xx answers, see $OUT" >&2; exit 1; }
  cleanup_last
}
cleanup_last() { # stop the most recently started service
  local last=${pids[-1]}
  kill -TERM -- "-$last" 2>/dev/null || true
  sleep 1
  kill -KILL -- "-$last" 2>/dev/null || true
  unset 'pids[-1]'
}

BARE=$(port)
measure bare "$BARE" target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$UP" 1 ${BARE_MODE:-}
GW=$(port)
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW"
threads = 1
http1_engine = "${ENGINE:-hyper}"
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_instr_bench"
[auth]
secret_key = "$SECRET"
[log]
level = "$([ "${ACCESS_LOG:-false}" = true ] && echo info || echo warn)"
access_log = ${ACCESS_LOG:-false}
[admin]
listen = "$([ "${METRICS:-on}" = off ] || echo "127.0.0.1:$(port)")"
[identity_assertion]
$(case "${ASSERTIONS:-reuse}" in off) echo "enabled = false" ;; sign) echo "reuse_seconds = 0" ;; *) echo "reuse_seconds = 5" ;; esac)
[[routes]]
prefix = "/bench/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
$([ "${RULES:-none}" = five ] && cat <<'RULES'
  [[routes.rules]]
  paths = ["/bench/health"]
  allow = "public"
  [[routes.rules]]
  paths = ["/bench/admin/"]
  roles = ["admin"]
  [[routes.rules]]
  paths = ["/bench/internal/"]
  networks = ["10.0.0.0/8"]
  allow = "deny"
  [[routes.rules]]
  paths = ["/bench/x"]
  methods = ["POST", "PUT", "DELETE"]
  roles = ["writer"]
  [[routes.rules]]
  paths = ["/bench/"]
  roles = ["bench.reader", "ops"]
RULES
)
CONF
measure gateway "$GW" "${GATEWAY_BIN:-target/release/sentinel-gateway}" --config "$OUT/gateway.toml"
if [ "${PEERS:-false}" = true ]; then
  NG=$(port)
  # One process (no master) so that callgrind follows the worker that does the work.
  nginx_proxy_conf "$OUT/nginx.conf" "$NG" "$UP" 1 "master_process off; "
  measure nginx "$NG" "$NGINX" -c "$PWD/$OUT/nginx.conf"
  CORE=$(port)
  measure core-pool "$CORE" target/release/examples/core_proxy "127.0.0.1:$CORE" "127.0.0.1:$UP" 1 pool
  CORE=$(port)
  measure core-stash "$CORE" target/release/examples/core_proxy "127.0.0.1:$CORE" "127.0.0.1:$UP" 1 stash
  HYPER=$(port)
  measure hyper "$HYPER" target/release/examples/hyper_proxy "127.0.0.1:$HYPER" "127.0.0.1:$UP" 1
  GWH=$(port)
  sed "0,/127.0.0.1:$GW\"/s//127.0.0.1:$GWH\"/" "$OUT/gateway.toml" >"$OUT/gateway-hyper.toml"
  measure gateway-hyper "$GWH" target/release/examples/gateway_hyper "$OUT/gateway-hyper.toml"
  HAJWT=$(port)
  haproxy_conf "$OUT/haproxy.cfg" 0 "$HAJWT" "$UP" 1 "$SECRET"
  measure haproxy-jwt "$HAJWT" "$HAPROXY" -db -f "$OUT/haproxy.cfg"
fi

python3 - "$OUT" "${PEERS:-false}" <<'PY'
import glob, re, subprocess, sys
out, peers = sys.argv[1], sys.argv[2] == "true"
def profile(name):
    reqs = int(open(f"{out}/{name}.requests").read())
    total, funcs = 0, {}
    for f in glob.glob(f"{out}/callgrind-{name}.out*"):
        text = subprocess.run(["callgrind_annotate", "--threshold=99", "--auto=no", "--inclusive=no", f],
                              capture_output=True, text=True).stdout
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*?)(?: \[.*\])?$", line)
            if not m:
                continue
            n = int(m.group(1).replace(",", ""))
            if "PROGRAM TOTALS" in m.group(2):
                total += n
            else:
                fn = re.sub(r" \([\d,]+x\)$", "", m.group(2).split(":", 1)[-1])
                funcs[fn] = funcs.get(fn, 0) + n
    return reqs, total / reqs, {k: v / reqs for k, v in funcs.items()}
br, b, bare_funcs = profile("bare")
gr, g, funcs = profile("gateway")
print(f"bare pingora:  {b:10.0f} instructions/request ({br} requests)")
print(f"gateway:       {g:10.0f} instructions/request ({gr} requests)")
print(f"gateway adds:  {g - b:10.0f} ({g / b:.2f}x the bare proxy, user space only)")
if peers:
    for name, label in [("nginx", "nginx"), ("core-pool", "pingora-core, pool"), ("core-stash", "pingora-core, idle list"), ("hyper", "hyper 1.x"), ("gateway-hyper", "gateway on hyper"), ("haproxy-jwt", "HAProxy jwt_verify")]:
        r, n, _ = profile(name)
        print(f"{label + ':':22} {n:10.0f} instructions/request ({r} requests; {n / b:.2f}x the bare proxy)")
print("\nwhere the difference goes: exclusive instructions per request, gateway minus bare (top 25)")
print(f"{'extra':>9} {'gateway':>9} {'bare':>9}")
diff = {fn: n - bare_funcs.get(fn, 0) for fn, n in funcs.items()}
for fn, d in sorted(diff.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{d:9.0f} {funcs[fn]:9.0f} {bare_funcs.get(fn, 0):9.0f}  {fn[:130]}")
PY
