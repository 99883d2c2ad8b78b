#!/usr/bin/env bash
# The tests: set up .venv where anything is missing (setup.sh), then pytest; arguments go to pytest:
#   bash test.sh                      # everything
#   bash test.sh -m "not process"     # the fast loop: no test that starts a worker, moto or a script
#   bash test.sh tests/test_audio.py -k pcm
set -uo pipefail
cd "$(dirname "$0")"
bash setup.sh || exit
.venv/bin/python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest's "no tests collected": a selection that matches nothing is a failure too
  echo "test.sh: pytest collected no tests (exit 5)" >&2
fi
exit "$status"
