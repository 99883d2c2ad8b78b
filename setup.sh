#!/usr/bin/env bash
# Create .venv and install the worker, test and benchmark dependencies (see requirements.txt for
# why f5-tts goes in with --no-deps), and Chromium with its driver, which the playground's browser
# test drives (tests/support/browser.py), from the system's packages. Idempotent: pip runs only when a
# requirements file changed since the last install (a hash kept in .venv), apt only when chromium or
# chromedriver is missing; delete .venv to start over.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "setup.sh: install chromium and chromedriver (tests/test_http_playground.py needs them)" >&2
    exit 1
  fi
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
STAMP=.venv/.requirements.sha256
WANT=$(cat requirements.txt requirements-dev.txt requirements-f5tts.txt | sha256sum)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -r requirements-f5tts.txt
  echo "$WANT" >"$STAMP"
fi
