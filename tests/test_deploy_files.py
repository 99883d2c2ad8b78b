"""Dockerfile.runpod and the RunPod Hub files (.runpod/hub.json, tests.json) checked against the code."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from f5worker.contract import MAX_TEXT_CHARS, parse_request
from f5worker.model_cache import resolve_model
from f5worker.model_files import BUILTIN_CHECKPOINTS, DEFAULT_MODEL, HubFile, ModelSources
from f5worker.settings import Settings
from f5worker.storage import BucketSettings, CachePaths
from tests.support.audio_bytes import decode
from tests.support.env_vars import env_vars_read_by_code
from tests.support.fake_hub import FakeHub
from tests.support.paths import ROOT
from tests.support.tiny_models import TINY_ENV

DOCKERFILE = ROOT / "Dockerfile.runpod"
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())
TORCH_CUDA = tuple(int(x) for x in torch.version.cuda.split(".")[:2])  # (13, 0) for the pinned torch 2.11.0


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def env_defaults() -> dict[str, str]:
    env = {}
    for name, args in instructions():
        if name == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_every_copy_source_exists_and_nothing_is_put_under_the_volume():
    copies = [args for name, args in instructions() if name == "COPY"]
    assert copies
    for args in copies:
        *sources, dest = shlex.split(args)
        for source in sources:
            assert list(ROOT.glob(source)), f"COPY {source}: no such file"
        assert not dest.startswith("/runpod-volume")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"*.py", "f5worker", "requirements.txt", "requirements-f5tts.txt"} & set(ignored)
    copied = {source for args in copies for source in shlex.split(args)[:-1]}
    assert {"f5worker/", "*.py"} <= copied  # the package and the entry points
    assert all("/runpod-volume" not in args for name, args in instructions() if name in ("RUN", "COPY", "WORKDIR"))


def test_env_defaults_are_the_codes_defaults():
    paths = CachePaths.from_env({})
    env = env_defaults()
    assert env["RUNPOD_VOLUME_PATH"] == str(paths.volume)
    assert env["HF_HOME"] == str(paths.hf_home)
    assert env["HF_HUB_CACHE"] == str(paths.hub_cache)
    assert env["TORCH_HOME"] == str(paths.torch_home)
    assert env["F5TTS_IMAGE_CACHE"] == str(paths.image_cache)
    assert not Path(env["F5TTS_IMAGE_CACHE"]).is_relative_to(paths.volume)  # the mount would hide it
    assert "HF_HUB_OFFLINE" not in env  # the first worker on an empty volume must be able to download


def test_the_image_caps_the_malloc_arenas():
    """The glibc setting measured with the worker's per-job malloc_trim (BENCHMARKS.md section 10)."""
    assert env_defaults()["MALLOC_ARENA_MAX"] == "2"


def test_entry_point_is_the_handler_unbuffered():
    cmds = [args for name, args in instructions() if name in ("CMD", "ENTRYPOINT")]
    assert [json.loads(c) for c in cmds] == [["python", "-u", "runpod_handler.py"]]


def test_the_exposed_port_is_the_http_modes_default():
    from f5worker.settings import HttpSettings

    exposed = [args for name, args in instructions() if name == "EXPOSE"]
    assert exposed == [str(HttpSettings.port)] and Settings.from_env({}).http.port == HttpSettings.port


def test_base_image_python_and_install_steps_match_the_project():
    base = next(args for name, args in instructions() if name == "FROM")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime)-ubuntu22\.04", base)
    assert match and (int(match[1]), int(match[2])) == TORCH_CUDA, base
    runs = [args for name, args in instructions() if name == "RUN"]
    assert any(f"python{sys.version_info.major}.{sys.version_info.minor} -m venv" in r for r in runs)
    assert not any("ffmpeg" in r for r in runs)  # audio.py uses libsndfile only
    install = next(r for r in runs if "pip install" in r)
    setup = (ROOT / "setup.sh").read_text()
    assert (install.index("pip install -r requirements.txt")
            < install.index("pip install --no-deps -r requirements-f5tts.txt"))
    assert "-r requirements.txt" in setup and "--no-deps -r requirements-f5tts.txt" in setup
    # Every project script a RUN step calls is one the tests run (provision.py: tests/test_provision.py).
    called = {m for r in runs for m in re.findall(r"python ([\w.]+\.py)", r)}
    assert called == {"provision.py"}


@pytest.mark.process
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.process
def test_the_bake_step_fills_the_image_cache_the_worker_falls_back_to(tmp_path):
    """Run the Dockerfile's own baking RUN line (as ``sh -c``) against a fake hub that serves the tiny
    weights under F5TTS_v1_Base's names, then resolve the model with an empty volume."""
    tiny = FakeHub.from_cache(Path(TINY_ENV["HF_HUB_CACHE"]))
    sources = ModelSources.from_env({"F5TTS_MODEL": "F5TTS_v1_Base"})
    checkpoint = HubFile.parse(sources.checkpoint)
    files = {k: v for k, v in tiny.files.items() if k[0] == "charactr/vocos-mel-24khz"}
    files[(checkpoint.repo_id, checkpoint.filename)] = tiny.files[("tiny-random/f5-tts", "model.safetensors")]
    hub = FakeHub(files).start()
    try:
        bake = next(args for name, args in instructions() if name == "RUN" and "provision.py" in args)
        image_cache = tmp_path / "opt" / "f5tts" / "hub"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "F5TTS_"))}
        env.update(hub.env(), BAKE_MODEL="F5TTS_v1_Base", F5TTS_IMAGE_CACHE=str(image_cache), TMPDIR=str(tmp_path),
                   HF_HUB_DISABLE_TELEMETRY="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        result = subprocess.run(["sh", "-c", bake], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("downloaded ") == 3
        assert [p.name for p in tmp_path.iterdir()] == ["opt"]  # the temp HF_HOME was removed
    finally:
        hub.stop()
    volume = tmp_path / "runpod-volume"
    paths = CachePaths.from_env({"RUNPOD_VOLUME_PATH": str(volume), "F5TTS_IMAGE_CACHE": str(image_cache)})
    resolved = resolve_model(sources, paths.hub_cache, allow_download=False, fallbacks=paths.fallback_caches)
    assert resolved.checkpoint.is_relative_to(image_cache) and resolved.vocoder_dir.is_relative_to(image_cache)
    assert not volume.exists()


def test_hub_json_has_the_publishing_fields():
    assert HUB["type"] == "serverless" and HUB["category"] == "audio"
    assert HUB["title"].strip() and len(HUB["description"]) > 40
    config = HUB["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    # ~6 GB of wheels + weights
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 15
    assert all(re.fullmatch(r"-?[A-Z0-9_ a-z]+", g.strip()) for g in config["gpuIds"].split(","))
    for version in (*config["allowedCudaVersions"], *TESTS["config"]["allowedCudaVersions"]):
        major, minor = (int(x) for x in version.split("."))
        assert major == TORCH_CUDA[0] and minor >= TORCH_CUDA[1], f"torch is built for CUDA {torch.version.cuda}"


def test_hub_json_env_inputs_match_the_code():
    env = {item["key"]: item for item in HUB["config"]["env"]}
    assert set(env) <= env_vars_read_by_code()
    assert {"BUCKET_NAME", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY",
            "F5TTS_MODEL", "F5TTS_CKPT_FILE"} <= set(env)
    for item in env.values():
        field = item["input"]
        assert field["type"] in ("string", "number", "boolean", "huggingface")
        assert field["name"] and field["description"]
        if "options" in field:
            assert field["default"] in [o["value"] for o in field["options"]]
    bucket = BucketSettings.from_env({})
    assert env["VOICES_PREFIX"]["input"]["default"] == bucket.voices_prefix
    assert env["OUTPUTS_PREFIX"]["input"]["default"] == bucket.outputs_prefix
    assert env["F5TTS_MODEL"]["input"]["default"] == DEFAULT_MODEL
    assert [o["value"] for o in env["F5TTS_MODEL"]["input"]["options"]] == list(BUILTIN_CHECKPOINTS)
    assert env["MAX_TEXT_CHARS"]["input"]["default"] == MAX_TEXT_CHARS
    assert [o["value"] for o in env["WORKER_MODE"]["input"]["options"]] == ["queue", "http"]
    assert Settings.from_env({"WORKER_MODE": env["WORKER_MODE"]["input"]["default"]}).mode == "queue"
    for preset in HUB["config"]["presets"]:
        assert preset["name"] and set(preset["defaults"]) <= set(env)
        ModelSources.from_env({k: str(v) for k, v in preset["defaults"].items()})  # a valid model selection


def test_tests_json_is_a_real_synthesis_the_worker_answers(make_worker):
    """The Hub's test input, run through the worker (tiny model, no bucket): valid input, real audio."""
    config = TESTS["config"]
    assert config["gpuTypeId"] and config["gpuCount"] == 1
    assert {e["key"] for e in config["env"]} <= env_vars_read_by_code()
    worker = make_worker({})
    for case in TESTS["tests"]:
        assert case["name"] and isinstance(case["timeout"], int)
        request = parse_request(case["input"])
        assert request.return_base64  # the Hub's test endpoint has no bucket
        result = worker.run({"id": case["name"], "input": case["input"]})
        assert "error" not in result, result
        wave, sr = decode(base64.b64decode(result["audio_base64"]))
        assert sr == 24_000 and len(wave) / sr == pytest.approx(result["duration_s"], abs=0.05)
