#!/usr/bin/env bash
# validate_storage_config.py end to end, without RunPod: a stand-in network volume (a tmpfs dir under
# /dev/shm, so a filesystem other than /) holding the tiny random-weight model in the HF cache layout,
# moto_server on 127.0.0.1 with a bucket and the tests' voices, then
#   1. python validate_storage_config.py --json            (everything provisioned)
#   2. python validate_storage_config.py --skip imports    (checkpoint truncated, wrong bucket name)
# and each run's exit code. Everything it creates is removed on exit.
#
#   bash tests/validate_demo.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

VOLUME=$(mktemp -d /dev/shm/f5tts-demo-volume-XXXXXX)
SCRATCH=$(mktemp -d /tmp/f5tts-demo-scratch-XXXXXX)
PORT=$($PY -c 'from tests.support.net import free_port; print(free_port())')
$PY -m moto.server -H 127.0.0.1 -p "$PORT" >"$SCRATCH/moto.log" 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID; rm -rf "$VOLUME" "$SCRATCH"' EXIT

$PY -m tests.support.tiny_models "$VOLUME/models" >/dev/null  # HF cache layout under $VOLUME/models/hub
mkdir -p "$VOLUME/models/torch"
export RUNPOD_VOLUME_PATH=$VOLUME HF_HOME=$VOLUME/models HF_HUB_CACHE=$VOLUME/models/hub
export TORCH_HOME=$VOLUME/models/torch HF_HUB_OFFLINE=1 TMPDIR=$SCRATCH
export F5TTS_MODEL=tiny F5TTS_CKPT_FILE=hf://tiny-random/f5-tts/model.safetensors
export F5TTS_VOCAB_FILE=hf://tiny-random/f5-tts/vocab.txt F5TTS_MODEL_CONFIG=hf://tiny-random/f5-tts/config.yaml
export BUCKET_NAME=demo-voices BUCKET_ENDPOINT_URL=http://127.0.0.1:$PORT BUCKET_REGION=us-east-1
export BUCKET_ACCESS_KEY_ID=AKIADEMO000000000000 BUCKET_SECRET_ACCESS_KEY=demo-secret-never-printed

$PY - <<'EOF'
import os
import time

import requests

from f5worker.storage import BucketSettings
from s3_utils import make_client
from tests.support.bucket import populate_bucket

settings = BucketSettings.from_env(os.environ)
for _ in range(100):
    try:
        requests.get(f"{settings.endpoint_url}/moto-api/", timeout=1)
        break
    except requests.ConnectionError:
        time.sleep(0.1)
populate_bucket(make_client(settings), settings.name)
EOF

echo "\$ python validate_storage_config.py --json"
$PY validate_storage_config.py --json
echo "exit code: $?"

BLOB=$(readlink -f "$HF_HUB_CACHE"/models--tiny-random--f5-tts/snapshots/*/model.safetensors)
truncate -s -1000 "$BLOB"
echo
echo "\$ truncate -s -1000 <checkpoint blob>; BUCKET_NAME=no-such-bucket python validate_storage_config.py --skip imports"
BUCKET_NAME=no-such-bucket $PY validate_storage_config.py --skip imports
echo "exit code: $?"
