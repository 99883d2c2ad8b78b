#!/usr/bin/env bash
# Set up, then one synthesis job through the real worker: runpod_handler.py --rp_serve_api on
# 127.0.0.1, the job posted to its /runsync, the audio written to out/demo.mp3 and read back.
# No weights can be downloaded here, so the worker runs on the tiny random-weight model the tests
# use, written into .cache/tiny in the Hugging Face cache layout: the audio is noise-like, the
# whole path (offline HF cache resolution, model load, the local API, synthesis, encoding) is the real one.
# With the real weights in $HF_HOME, start the worker the same way without the tiny model's variables.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
eval "$(.venv/bin/python -m tests.support.tiny_models .cache/tiny)"
mkdir -p out
PORT=$(.venv/bin/python -c 'from tests.support.net import free_port; print(free_port())')
.venv/bin/python runpod_handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port "$PORT" \
  >out/demo-worker.log 2>&1 &
WORKER=$!
trap 'kill "$WORKER" 2>/dev/null || true; wait "$WORKER" 2>/dev/null || true' EXIT
echo "demo: worker pid $WORKER loading on 127.0.0.1:$PORT (log: out/demo-worker.log)"
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
  if ! kill -0 "$WORKER" 2>/dev/null; then
    cat out/demo-worker.log >&2
    echo "demo: the worker exited before it was ready (its log is above)" >&2
    exit 1
  fi
  sleep 0.2
done
.venv/bin/python tools/demo_job.py "http://127.0.0.1:$PORT" out/demo.mp3
