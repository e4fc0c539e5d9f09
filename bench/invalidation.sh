#!/usr/bin/env bash
# Invalidation across instances: N = 1, 2, 4, 8 gateways on one PostgreSQL, each with one
# protected route to a fixed-response nginx. Per trial, a token is made to work on every
# instance (each has the user's state cached), then the session is ended (POST /auth/logout on
# the first instance) or the user deactivated (`sentinel-gateway users deactivate`), and every
# instance is asked every 2 ms until it refuses the token: the time until the last one refuses
# (from the logout's answer, or the CLI's exit: the change is committed by then). p50/p99 per N.
#
#   bench/invalidation.sh [trials]        (default 60 logouts and 20 deactivations per N)
#   NS="1 2 4 8" bench/invalidation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-60}
NS=${NS:-"1 2 4 8"}
OUT=target/bench/invalidation
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bins

UP=$(port)
upstream_conf "$OUT/upstream.conf" "$UP"
start "$OUT/upstream.log" "$NGINX" -c "$PWD/$OUT/upstream.conf"
SECRET=bench-secret-0123456789abcdef0123456789abcdef

for n in $NS; do
  db=sg_invalidation_$n
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db" >/dev/null 2>&1 || true
  createdb -h 127.0.0.1 -U postgres "$db"
  ports=()
  first=${#pids[@]}
  for i in $(seq 1 "$n"); do
    p=$(port)
    ports+=("$p")
    cat >"$OUT/gw-$n-$i.toml" <<CONF
[server]
listen = "127.0.0.1:$p"
threads = 1
shutdown_grace_seconds = 0
[database]
url = "postgres://postgres@127.0.0.1:5432/$db"
pool_size = 4
proxy_pool_size = 2
[auth]
secret_key = "$SECRET"
[rate_limit]
login_per_ip_per_minute = 100000
login_per_account_per_minute = 100000
[admin]
listen = ""
[log]
level = "warn"
access_log = false
[[routes]]
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
auth = "required"
CONF
    start "$OUT/gw-$n-$i.log" target/release/sentinel-gateway --config "$OUT/gw-$n-$i.toml"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$p/ready" && break; sleep 0.1; done
  done
  python3 bench/invalidation.py "$n" "$TRIALS" "$OUT/gw-$n-1.toml" "${ports[@]}" | tee "$OUT/result-$n.txt"
  # Stop this N's gateways before the next N starts.
  for ((k = ${#pids[@]} - 1; k >= first; k--)); do
    kill -TERM -- "-${pids[$k]}" 2>/dev/null || true
    unset "pids[$k]"
  done
  pids=("${pids[@]}")
  sleep 1
done
echo
cat "$OUT"/result-*.txt
