#!/usr/bin/env bash
# The test suite: unit tests and the integration tests, which start the real binary against
# the local PostgreSQL (one fresh database per test, dropped afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
if ! command -v cargo >/dev/null; then
  echo "test: cargo not found: install a Rust toolchain (https://rustup.rs) and try again" >&2
  exit 1
fi
cargo test --all-targets "$@"
