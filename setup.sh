#!/usr/bin/env bash
# Create .venv and install the worker, test and benchmark dependencies (see requirements.txt for
# why f5-tts goes in with --no-deps). Idempotent: pip runs only when a requirements file changed
# since the last install (a hash kept in .venv); delete .venv to start over.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
STAMP=.venv/.requirements.sha256
WANT=$(cat requirements.txt requirements-dev.txt requirements-f5tts.txt | sha256sum)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -r requirements-f5tts.txt
  echo "$WANT" >"$STAMP"
fi
