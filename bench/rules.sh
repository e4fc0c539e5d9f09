#!/usr/bin/env bash
# What route rules cost a proxied request: user-space instructions per request (callgrind, as
# bench/proxy-instructions.sh counts them) for the same protected route without rules and with
# five rules, the last of which decides by a role the user holds, measured in the same run.
#
#   bench/rules.sh [seconds]        (default 10; ROUNDS=3 by default, alternating the order)
#
# Target: the route with rules costs no more than 1/0.97 of the one without, i.e. the ratio
# none/five is at least 0.97.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
OUT=target/bench/rules
mkdir -p "$OUT"
count() { # RULES -> instructions per request of the gateway
  RULES=$1 bench/proxy-instructions.sh "$DURATION" >"$OUT/instructions-$1-$2.txt"
  awk '/^gateway:/ {print $2}' "$OUT/instructions-$1-$2.txt"
}
rows=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="none five"; else order="five none"; fi
  declare -A n=()
  for rules in $order; do n[$rules]=$(count "$rules" "$round"); done
  rows+=("$round ${n[none]} ${n[five]}")
done
python3 - "${rows[@]}" <<'PY'
import sys
print(f"{'round':>5} {'no rules':>10} {'five rules':>11} {'none/five':>10}")
ratios = []
for row in sys.argv[1:]:
    rnd, none, five = row.split()
    ratios.append(float(none) / float(five))
    print(f"{rnd:>5} {float(none):10.0f} {float(five):11.0f} {ratios[-1]:10.3f}")
ratios.sort()
median = ratios[len(ratios) // 2]
print(f"median none/five: {median:.3f}   (target: at least 0.97) -> {'ok' if median >= 0.97 else 'MISSED'}")
PY
