#!/usr/bin/env bash
# Set up the browser test of the sample gallery (tests/test_gallery_browser.py), idempotently:
#   1. Debian's Chromium (/usr/bin/chromium), installed with apt-get when missing (needs root);
#   2. the npm packages in tests/browser (the widget html-manager and playwright-core), with `npm ci`
#      from package-lock.json, only when node_modules is missing or older than the lock file.
# No browser is downloaded by a test tool: playwright-core drives Debian's Chromium.
# Usage: bash scripts/setup_browser_test.sh   (`make test` runs it before pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[browser-test] chromium is missing and cannot be installed here (needs root and apt-get):" >&2
    echo "[browser-test]   install Debian's 'chromium' package, then re-run this script" >&2
    exit 1
  fi
  echo "[browser-test] installing Debian's chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "[browser-test] $(chromium --version 2>/dev/null || echo 'chromium: version unknown')"

if ! command -v npm >/dev/null 2>&1; then
  echo "[browser-test] npm is missing: install Node.js 18+ with npm (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
stamp=tests/browser/node_modules/.medkit-npm-ci
if [ ! -f "$stamp" ] || [ tests/browser/package-lock.json -nt "$stamp" ]; then
  echo "[browser-test] npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
fi
echo "[browser-test] ready: tests/browser/node_modules"
