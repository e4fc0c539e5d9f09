# Shared by the benchmark scripts (sourced, not run): tools, free ports, services started in
# process groups of their own and stopped on exit, and the fixed-response nginx upstream.

# install_missing TOOL... — apt-get installs the Debian packages of the same names when missing.
install_missing() {
  local need=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || need+=("$tool")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start LOG COMMAND... — runs COMMAND in a process group of its own (so that its workers are
# stopped with it), output to LOG; its pid is appended to `pids`.
pids=()
start() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 &
  pids+=($!)
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# upstream_conf FILE PORT — an nginx answering "ok" to everything on 127.0.0.1:PORT.
upstream_conf() {
  cat >"$1" <<CONF
worker_processes 1; daemon off; pid $PWD/$1.pid; error_log stderr;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$2; location / { default_type text/plain; return 200 "ok\n"; } } }
CONF
}

# nginx_proxy_conf FILE PORT UPSTREAM_PORT WORKERS [DIRECTIVES] — nginx as a plain reverse proxy
# on 127.0.0.1:PORT, keeping upstream connections alive; DIRECTIVES go first (`master_process
# off;`, say).
nginx_proxy_conf() {
  cat >"$1" <<CONF
${5:-}worker_processes $4; daemon off; pid $PWD/$1.pid; error_log stderr;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$3; keepalive 128; }
  server { listen 127.0.0.1:$2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}

# haproxy_conf FILE PORT JWT_PORT UPSTREAM_PORT THREADS SECRET — HAProxy as a plain reverse
# proxy on PORT and, on JWT_PORT, doing the gateway's job natively: the bearer token verified
# as the gateway verifies it (HS256 only, signature with SECRET, exp) and its subject handed to
# the upstream as X-User-Id; everything else is 401. A port of 0 leaves that frontend out.
haproxy_conf() {
  {
    cat <<CONF
global
  nbthread $5
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
CONF
    [ "$2" = 0 ] || printf 'frontend f\n  bind 127.0.0.1:%s\n  default_backend b\n' "$2"
    [ "$3" = 0 ] || cat <<CONF
frontend fjwt
  bind 127.0.0.1:$3
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","$6") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 1 }
  http-request set-header X-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend b
CONF
    printf 'backend b\n  server s1 127.0.0.1:%s\n' "$4"
  } >"$1"
}

# start_seed DIR PORT DATABASE SECRET OUT — the seed's FastAPI backend (a checkout in DIR) on
# 127.0.0.1:PORT with 2 uvicorn workers, its requirements in a virtualenv under OUT.
start_seed() {
  local dir=$1 port=$2 database=$3 secret=$4 out=$5
  if [ ! -x "$out/seed-venv/bin/uvicorn" ]; then
    python3 -m venv "$out/seed-venv"
    "$out/seed-venv/bin/pip" install -q -r "$dir/requirements.txt"
  fi
  (cd "$dir" && exec setsid env -i PATH="$PATH" DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1/$database" \
    SECRET_KEY="$secret" "$OLDPWD/$out/seed-venv/bin/uvicorn" app.main:app --port "$port" \
    --workers 2 --log-level warning) >"$out/seed.log" 2>&1 &
  pids+=($!)
}

# wait_up BASE [PATH] — until BASE/PATH (default /health; a gateway's /ready once its
# database is migrated) answers 2xx (20 s at most).
wait_up() {
  for _ in $(seq 1 100); do curl -sf "$1${2:-/health}" >/dev/null && return 0; sleep 0.2; done
  echo "no answer from $1" >&2
  exit 1
}

# A measured row with any error (a non-2xx answer, a socket error, a timeout) is no result: a
# broken bench must never print a rate. Each row's errors are recorded with `checked`, the
# table marks such rows, and `verdict` (called at the end) names them and exits 1.
failed_rows=()

# wrk_errors FILE — the errors in wrk's output FILE.
wrk_errors() {
  awk '/Non-2xx/ {err+=$5} /Socket errors/ {gsub(",","");err+=$4+$6+$8+$10} END {print err+0}' "$1"
}

# checked LABEL ERRORS — records LABEL as failed when ERRORS is not 0.
checked() {
  if [ "${2:-0}" != 0 ]; then failed_rows+=("$1: $2 errors"); fi
  return 0
}

# check_rows ROW... — `checked` for rows whose last word is their error count.
check_rows() {
  local r
  for r in "$@"; do checked "$r" "${r##* }"; done
}

# mark ERRORS — the marker a table row with errors gets.
mark() { if [ "${1:-0}" != 0 ]; then printf '  <- FAILED (%s errors): not a result' "$1"; fi; }

# verdict — exits 1, naming every row that had errors, if any did.
verdict() {
  if [ ${#failed_rows[@]} -gt 0 ]; then
    echo "bench: FAILED: rows with errors (their rates are not results):" >&2
    printf '  %s\n' "${failed_rows[@]}" >&2
    exit 1
  fi
}

# totp_code SECRET [STEPS] — the RFC 6238 code of base32 SECRET now (or STEPS steps later), by
# Python's standard library, as an authenticator app would show it.
totp_code() {
  python3 -c 'import base64,hmac,struct,sys,time;k=base64.b32decode(sys.argv[1]+"="*(-len(sys.argv[1])%8));h=hmac.digest(k,struct.pack(">Q",int(time.time())//30+int(sys.argv[2])),"sha1");o=h[-1]&15;print("%06d"%((struct.unpack(">I",h[o:o+4])[0]&0x7fffffff)%1000000))' "$1" "${2:-0}"
}
