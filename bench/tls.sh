#!/usr/bin/env bash
# TLS against nginx, same certificate (ECDSA P-256, made here with openssl), same run:
#   keep-alive   requests/s over established TLS connections (64 connections), and
#   handshakes   new TLS connections/s (`Connection: close` on every request: one full
#                handshake per request),
# for nginx answering `return 200` and the gateway answering GET /health (its own endpoint,
# no upstream), each on THREADS worker threads (default 1), pinned to the last cores with wrk
# on the others. Each pair runs ROUNDS times (default 3), alternating which goes first.
#
#   bench/tls.sh [seconds-per-run] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
THREADS=${2:-1}
ROUNDS=${ROUNDS:-3}
OUT=target/bench/tls
mkdir -p "$OUT"
rm -rf "${OUT:?}"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing nginx wrk openssl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet --bins

CORES=$(nproc)
on_server=()
on_load=()
if [ "$CORES" -gt "$THREADS" ]; then
  on_server=(taskset -c "$((CORES - THREADS))-$((CORES - 1))")
  on_load=(taskset -c "0-$((CORES - THREADS - 1))")
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

NG=$(port); GW=$(port); GWPLAIN=$(port)
cat >"$OUT/nginx.conf" <<CONF
worker_processes $THREADS; daemon off; pid $PWD/$OUT/nginx.pid; error_log stderr;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$NG ssl http2;
    ssl_certificate $PWD/$OUT/cert.pem; ssl_certificate_key $PWD/$OUT/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { default_type application/json; return 200 '{"status":"ok"}'; } } }
CONF
start "$OUT/nginx.log" "${on_server[@]}" "$NGINX" -c "$PWD/$OUT/nginx.conf"

dropdb -h 127.0.0.1 -U postgres --if-exists --force sg_tls_bench >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres sg_tls_bench
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GWPLAIN"
threads = $THREADS
[database]
url = "postgres://postgres@127.0.0.1:5432/sg_tls_bench"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[tls]
listen = "127.0.0.1:$GW"
cert_file = "$PWD/$OUT/cert.pem"
key_file = "$PWD/$OUT/key.pem"
[admin]
listen = ""
[log]
level = "warn"
access_log = false
CONF
start "$OUT/gateway.log" "${on_server[@]}" target/release/sentinel-gateway --config "$OUT/gateway.toml"
for p in $NG $GW; do
  for _ in $(seq 1 100); do curl -skf -o /dev/null "https://127.0.0.1:$p/health" && break; sleep 0.1; done
done

summarize() {
  awk '/Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10}
       END {printf "%s %s %d\n", rps, p99, err}'
}
rows=()
run() { # NAME PORT MODE ROUND
  local extra=()
  [ "$3" = handshakes ] && extra=(-H "Connection: close")
  "${on_load[@]}" wrk -t2 -c64 -d"${DURATION}s" --latency "${extra[@]}" "https://127.0.0.1:$2/health" \
    >"$OUT/wrk-$1-$3-$4.txt"
  rows+=("$1 $3 $4 $(summarize <"$OUT/wrk-$1-$3-$4.txt")")
}
for round in $(seq 1 "$ROUNDS"); do
  for mode in keepalive handshakes; do
    if [ $((round % 2)) = 1 ]; then
      run nginx "$NG" "$mode" "$round"; run gateway "$GW" "$mode" "$round"
    else
      run gateway "$GW" "$mode" "$round"; run nginx "$NG" "$mode" "$round"
    fi
  done
done

echo "TLS, 64 connections, $THREADS server thread(s), $ROUNDS rounds of ${DURATION}s (median shown)"
python3 - "${rows[@]}" <<'PY'
import sys
runs = {}
for r in sys.argv[1:]:
    name, mode, rnd, rps, p99, err = r.split()
    runs.setdefault((name, mode), []).append((float(rps), p99, int(err)))
print(f"{'setup':10} {'mode':11} {'req/s':>9} {'p99':>9} {'errors':>6}   rounds")
med = {}
for (name, mode), rs in sorted(runs.items()):
    m = sorted(rs)[len(rs) // 2]
    med[(name, mode)] = m[0]
    errors = sum(r[2] for r in rs)
    print(f"{name:10} {mode:11} {m[0]:9.0f} {m[1]:>9} {errors:6}   " + " ".join(f"{r[0]:.0f}" for r in rs)
          + ("  <- FAILED: not a result" if errors else ""))
for mode in ("keepalive", "handshakes"):
    print(f"gateway/nginx {mode}: {med[('gateway', mode)] / med[('nginx', mode)]:.2f}x")
PY
check_rows "${rows[@]}"
verdict
