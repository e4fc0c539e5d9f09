#!/usr/bin/env bash
# The admin API on a big directory: GET /auth/admin/users with 100,000 users in the database,
# one gateway instance, latency at 8 connections (wrk). Rows: the first page of 50, a page deep
# in the list (the cursor of the 90,000th user), holders of a role, a search by text (which
# reads every row), and the audit log's first page; the gateway's own GET /auth/users/me in the
# same run as the reference (answered from memory).
#
#   bench/admin.sh [seconds-per-row] [threads]     (defaults 10 and 1)
#
# Target: the first page of 50 answers in under 50 ms at p99.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
THREADS=${2:-1}
USERS=${USERS:-100000}
OUT=target/bench/admin
mkdir -p "$OUT"
rm -f "$OUT"/*

source bench/lib.sh
scripts/ensure-deps.sh
install_missing wrk
cargo build --release --quiet --bins

CORES=$(nproc)
on_gateway=()
on_load=()
if [ "$CORES" -gt "$THREADS" ]; then
  on_gateway=(taskset -c "$((CORES - THREADS))-$((CORES - 1))")
  on_load=(taskset -c "0-$((CORES - THREADS - 1))")
fi

DB=sg_admin_bench
dropdb -h 127.0.0.1 -U postgres --if-exists --force "$DB" >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres "$DB"
GW=$(port)
cat >"$OUT/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW"
threads = $THREADS
[database]
url = "postgres://postgres@127.0.0.1:5432/$DB"
[auth]
secret_key = "bench-secret-0123456789abcdef0123456789abcdef"
[admin]
listen = ""
[log]
level = "warn"
access_log = false
CONF
start "$OUT/gateway.log" "${on_gateway[@]}" target/release/sentinel-gateway --config "$OUT/gateway.toml"
BASE="http://127.0.0.1:$GW"
wait_up "$BASE" /ready
TOKEN=$(curl -sf -X POST "$BASE/auth/register" -H 'content-type: application/json' \
  -d '{"email":"admin@example.com","password":"BenchPassword123!"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
target/release/sentinel-gateway --config "$OUT/gateway.toml" users grant admin@example.com admin >/dev/null

# The directory: USERS users created a second apart (a tenth inactive, a tenth holding `ops`),
# each with a few audit events.
psql -q -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1 <<SQL
INSERT INTO users (id, email, full_name, hashed_password, is_active, created_at, updated_at)
SELECT gen_random_uuid()::text, 'user' || g || '@example.com', 'User Number ' || g,
       '\$argon2id\$v=19\$m=19456,t=2,p=1\$bm90LWEtcmVhbC1zYWx0\$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA',
       g % 10 <> 0, timestamp '2026-01-01' + g * interval '1 second', now()
FROM generate_series(1, $USERS) AS g;
INSERT INTO sentinel_user_roles (user_id, role)
SELECT id, 'ops' FROM users WHERE email ~ '^user[0-9]*0@';
INSERT INTO sentinel_audit_events (type, user_id, client_address, detail)
SELECT 'login.failed', id, '203.0.113.7', '{"reason": "wrong_password"}'
FROM users, generate_series(1, 3);
ANALYZE;
SQL
DEEP=$(psql -qtA -h 127.0.0.1 -U postgres -d "$DB" -c \
  "SELECT id FROM users WHERE email = 'user$((USERS * 9 / 10))@example.com'")

AUTH="Authorization: Bearer $TOKEN"
declare -A PATHS=(
  [first-page]="/auth/admin/users?limit=50"
  [deep-page]="/auth/admin/users?limit=50&after=$DEEP"
  [role]="/auth/admin/users?limit=50&role=ops"
  [search]="/auth/admin/users?limit=50&q=number%204242"
  [events]="/auth/admin/events?limit=50"
  [users-me]="/auth/users/me"
)
ORDER="users-me first-page deep-page role search events"
for name in $ORDER; do
  "${on_load[@]}" wrk -t1 -c4 -d2s "$BASE${PATHS[$name]}" -H "$AUTH" >/dev/null
done
rows=()
for name in $ORDER; do
  "${on_load[@]}" wrk -t1 -c8 -d"${DURATION}s" --latency "$BASE${PATHS[$name]}" -H "$AUTH" >"$OUT/wrk-$name.txt"
  rows+=("$name $(awk '/Requests\/sec/ {rps=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} END {printf "%s %s %s", rps, p50, p99}' "$OUT/wrk-$name.txt") $(wrk_errors "$OUT/wrk-$name.txt")")
done
# A sanity check of what was measured: 50 users and a cursor.
curl -sf "$BASE/auth/admin/users?limit=50" -H "$AUTH" |
  python3 -c 'import json,sys; p=json.load(sys.stdin); assert len(p["users"]) == 50 and p["next"], p'

echo "$USERS users, 8 connections, $THREADS gateway thread(s), ${DURATION}s per row"
python3 - "${rows[@]}" <<'PY'
import re, sys
def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{'row':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} errors")
for row in sys.argv[1:]:
    name, rps, p50, p99, err = row.split()
    flag = ""
    if name == "first-page":
        flag = "   (target: p99 under 50 ms) -> " + ("ok" if ms(p99) < 50 else "MISSED")
    print(f"{name:<11} {float(rps):9.0f} {ms(p50):8.2f} {ms(p99):8.2f} {err}{flag}")
PY
check_rows "${rows[@]}"
verdict
