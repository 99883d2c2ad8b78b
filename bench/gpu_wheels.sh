#!/usr/bin/env bash
# The wheels bench.gpu_suite needs on the GPU machine (no package index there), into DIR (default .whl):
# ../shared/gpu-kit's set, less its x_transformers 2.x (requirements.txt pins 1.40.11, and pip
# refuses two versions of one package), plus what the worker imports that the kit lacks.
# Then, on the GPU machine (device call with carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_suite --max-batch 8 16
set -euo pipefail
dir=${1:-.whl}
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/../shared/gpu-kit/fetch-wheels.sh" "$dir"
rm -f "$dir"/x_transformers-2.*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$dir" \
  platformdirs pysubs2 regex requests urllib3 idna charset_normalizer certifi torchdiffeq jiwer rapidfuzz \
  wetext==0.1.8 kaldifst==1.8.3 contractions textsearch anyascii pyahocorasick
