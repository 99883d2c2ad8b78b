#!/usr/bin/env bash
# Set up, then run one synthesis job through the real handler (`--test_input`).
# No weights can be downloaded here, so the job runs on the tiny random-weight model the tests
# use, written into .cache/tiny in the Hugging Face cache layout: the audio is noise-like, the
# whole path (offline HF cache resolution, model load, synthesis, encoding) is the real one.
# On a machine with the real weights in $HF_HOME, run `python runpod_handler.py --test_input ...`.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
eval "$(.venv/bin/python -m tests.support.tiny_models .cache/tiny)"
export HF_HUB_OFFLINE=1
.venv/bin/python runpod_handler.py --test_input \
  '{"input": {"text": "Hello from the F5-TTS RunPod worker.", "output_format": "mp3", "seed": 42}}'
