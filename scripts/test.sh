#!/usr/bin/env bash
# The test suite: unit tests and the integration tests, which start the real binary against
# the local PostgreSQL (one fresh database per test, dropped afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo test --all-targets "$@"
