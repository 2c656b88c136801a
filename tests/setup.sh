#!/usr/bin/env bash
# What the test suite drives for real, beyond the Python packages: a redis-server (the Redis
# store tests start their own on a free port), nginx (tests/test_nginx.py starts its own), openssl,
# valgrind (benchmarks/instructions_per_token.py), Debian's chromium and the browser test's node
# modules (playwright-core, no browser download; the Vercel AI SDK's ai package). Idempotent;
# installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server chromium nodejs npm nginx openssl valgrind)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    case "$pkg" in
        # Node may come from elsewhere than Debian (it does on this kind of machine).
        nodejs) command -v node >/dev/null 2>&1 && continue ;;
        npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/ai ]; then
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
