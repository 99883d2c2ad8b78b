#!/usr/bin/env bash
# Create .venv and install the worker, test and benchmark dependencies (see requirements.txt for
# why f5-tts goes in with --no-deps).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -r requirements-f5tts.txt
