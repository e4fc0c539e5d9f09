#!/usr/bin/env bash
# The test suite: unit tests and the integration tests, which start the real binary against
# the local PostgreSQL (one fresh database per test, dropped afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
# The browser tests (tests/api/browser.rs, docs.rs) drive Debian's Chromium headless; the
# packaging tests check the systemd unit with systemd-analyze.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v openssl >/dev/null || need+=(openssl)   # the TLS tests make their certificates
command -v curl >/dev/null || need+=(curl)         # and speak HTTP/2 with curl
command -v redis-server >/dev/null || need+=(redis-server)  # shared limits: tests run their own
command -v npm >/dev/null || need+=(nodejs npm)    # a real Express upstream (path spellings)
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing ${need[*]} for the browser, packaging, TLS and Redis tests"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Tools of the integration tests from PyPI: Prometheus's text parser, an OpenAPI validator,
# hadolint.
if ! python3 -c "import prometheus_client, openapi_spec_validator" 2>/dev/null \
  || ! command -v hadolint >/dev/null; then
  echo "test: installing tests/support/requirements.txt"
  python3 -m pip install -q --root-user-action=ignore -r tests/support/requirements.txt
fi
# Express 4, as the path-spelling tests' upstream (tests/support/express, locked versions).
if [ ! -d tests/support/express/node_modules/express ]; then
  echo "test: installing tests/support/express (npm ci)"
  npm ci --prefix tests/support/express --no-audit --no-fund --loglevel=error
fi
if ! command -v cargo >/dev/null; then
  echo "test: cargo not found: install a Rust toolchain (https://rustup.rs) and try again" >&2
  exit 1
fi
cargo test --all-targets "$@"
