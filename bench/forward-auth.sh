#!/usr/bin/env bash
# Forward auth: nginx in front of a fixed-response upstream, asking for each request
#   (a) nginx auth_request -> sentinel-gateway's /auth/verify (the README's set-up),
#   (b) nginx auth_request -> the seed's GET /auth/users/me (what a team has today: the seed
#       backend as the auth service, 200 for a valid token),
# beside
#   (c) sentinel-gateway as the proxy itself (a bearer-verified protected route), and
#   (d) nginx alone in front of the upstream (no auth at all: the ceiling).
# requests/s and p99 (wrk, CONNS connections, default 16), nginx with one worker, the gateway
# with one thread; ROUNDS rounds (default 3) interleaved, each setup's median round shown.
# Targets: (a) >= 20x (b); (a) >= 0.5x (c).
#
#   bench/forward-auth.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
SEED_DIR=${SEED_DIR:-../shared/peers/seed_fastapi}
if [ ! -d "$SEED_DIR" ]; then
  echo "bench/forward-auth.sh: no seed backend at $SEED_DIR: set SEED_DIR to a checkout of it" >&2
  exit 1
fi
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
PASSWORD="BenchPassword123!"
OUT=target/bench/forward-auth
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT/rows"

scripts/ensure-deps.sh
source bench/lib.sh
install_missing wrk nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

UP=$(port); GW=$(port); SEED=$(port); NG_GW=$(port); NG_SEED=$(port); NG=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/upstream.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"
nginx_proxy_conf "$OUT/nginx.conf" "$NG" "$UP" 1
start "$OUT/nginx.log" "$NGINX" -c "$PWD/$OUT/nginx.conf"

# nginx_auth_conf FILE PORT AUTH_PORT AUTH_URI — nginx with auth_request to AUTH_URI on
# 127.0.0.1:AUTH_PORT (keep-alive to both), copying the identity as the README does.
nginx_auth_conf() {
  cat >"$1" <<CONF
worker_processes 1; daemon off; pid $PWD/$1.pid; error_log stderr;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  upstream auth { server 127.0.0.1:$3; keepalive 128; }
  server { listen 127.0.0.1:$2;
    location / {
      auth_request /_verify;
      auth_request_set \$user_id \$upstream_http_x_user_id;
      auth_request_set \$user_roles \$upstream_http_x_user_roles;
      proxy_set_header X-User-Id \$user_id;
      proxy_set_header X-User-Roles \$user_roles;
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
    }
    location = /_verify {
      internal;
      proxy_pass http://auth$4; proxy_http_version 1.1;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Connection "";
      proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Forwarded-For \$remote_addr;
    } } }
CONF
}
nginx_auth_conf "$OUT/nginx-gateway.conf" "$NG_GW" "$GW" /auth/verify
nginx_auth_conf "$OUT/nginx-seed.conf" "$NG_SEED" "$SEED" /auth/users/me
start "$OUT/nginx-gateway.log" "$NGINX" -c "$PWD/$OUT/nginx-gateway.conf"
start "$OUT/nginx-seed.log" "$NGINX" -c "$PWD/$OUT/nginx-seed.conf"

for db in sg_bench_fa seed_bench_fa; do
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db"
  createdb -h 127.0.0.1 -U postgres "$db"
done
cargo build --release --quiet --bin sentinel-gateway
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW"
threads = 1
[database]
url = "postgres://postgres@127.0.0.1/sg_bench_fa"
[admin]
listen = "127.0.0.1:$(port)"
[log]
level = "warn"
[proxy]
trusted_proxies = ["127.0.0.1"]
[[routes]]
prefix = "/bench/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
start "$OUT/gateway.log" env -i PATH="$PATH" SECRET_KEY="$SECRET" \
  target/release/sentinel-gateway --config "$OUT/gateway.toml"
start_seed "$SEED_DIR" "$SEED" seed_bench_fa "$SECRET" "$OUT"
wait_up "http://127.0.0.1:$GW" /ready
wait_up "http://127.0.0.1:$SEED" /health

token_for() { # base -> registers bench@example.com, prints a token
  curl -sf -X POST "$1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@example.com\",\"password\":\"$PASSWORD\",\"full_name\":\"Bench\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
GW_TOKEN=$(token_for "http://127.0.0.1:$GW")
SEED_TOKEN=$(token_for "http://127.0.0.1:$SEED")

declare -A URL=([a-nginx-verify]="http://127.0.0.1:$NG_GW/bench/x"
  [b-nginx-seed]="http://127.0.0.1:$NG_SEED/bench/x"
  [c-gateway-proxy]="http://127.0.0.1:$GW/bench/x"
  [d-nginx-no-auth]="http://127.0.0.1:$NG/bench/x")
declare -A TOKEN=([a-nginx-verify]=$GW_TOKEN [b-nginx-seed]=$SEED_TOKEN
  [c-gateway-proxy]=$GW_TOKEN [d-nginx-no-auth]=$GW_TOKEN)
setups=(a-nginx-verify b-nginx-seed c-gateway-proxy d-nginx-no-auth)

# Each setup must answer 200 with the token and refuse without it (d excepted).
for s in "${setups[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN[$s]}" "${URL[$s]}")
  [ "$code" = 200 ] || { echo "bench: $s answers $code with the token" >&2; exit 1; }
  if [ "$s" != d-nginx-no-auth ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$s]}")
    [ "$code" = 401 ] || { echo "bench: $s answers $code without a token" >&2; exit 1; }
  fi
done

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10} END {printf "%s %s %d\n", rps, p99, err}'
}
for round in $(seq 1 "$ROUNDS"); do
  order=("${setups[@]}")
  if [ $((round % 2)) = 0 ]; then order=(d-nginx-no-auth c-gateway-proxy b-nginx-seed a-nginx-verify); fi
  for s in "${order[@]}"; do
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer ${TOKEN[$s]}" \
      "${URL[$s]}" >"$OUT/wrk-$s-$round.txt"
    read -r rps p99 err < <(summarize <"$OUT/wrk-$s-$round.txt")
    echo "$s $round $rps $p99 $err" >>"$OUT/rows"
    checked "$s round $round" "$err"
  done
done

python3 - "$OUT/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    s, _, rps, p99, err = line.split()
    rows.setdefault(s, []).append((float(rps), p99, int(err)))
med = {}
print(f"{'setup':<18} {'req/s (median round)':>22} {'p99':>10}  rounds")
for s in sorted(rows):
    runs = sorted(rows[s])
    m = runs[len(runs) // 2]
    med[s] = m[0]
    print(f"{s:<18} {m[0]:>22.0f} {m[1]:>10}  {' '.join(f'{r[0]:.0f}' for r in rows[s])}")
a, b, c = med["a-nginx-verify"], med["b-nginx-seed"], med["c-gateway-proxy"]
print(f"(a)/(b) {a / b:.1f}x (target >= 20x)   (a)/(c) {a / c:.2f}x (target >= 0.5x)")
PY
rm -f "$OUT/rows"
verdict
