"""Model provisioning for real: ``provision.py`` and the worker download the tiny model from a fake
Hugging Face hub on 127.0.0.1 (``tests/support/fake_hub.py``) into an empty "volume"."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from f5worker.model_cache import LEASE_FILE, cache_lease, etag_matches
from f5worker.model_files import HubFile, ModelFilesMissing, ModelSources
from f5worker.storage import CachePaths, human_bytes, nearest_existing
from tests.support.bucket import BUCKET_ENV_KEYS
from tests.support.fake_hub import FakeHub, git_blob_sha1
from tests.support.paths import ROOT
from tests.support.tiny_models import TINY_ENV, tiny_model_env

REFS = ModelSources.from_env(TINY_ENV).file_refs()
JOB = {"text": "Hello from a fresh volume.", "nfe_step": 4, "seed": 1}


def process_env(hub: FakeHub, volume: Path, **extra: str) -> dict[str, str]:
    """A worker's environment on RunPod, with the volume at ``volume`` and the hub at ``hub``."""
    paths = CachePaths.from_env({"RUNPOD_VOLUME_PATH": str(volume)})  # the defaults, under ``volume``
    env = {k: v for k, v in os.environ.items() if k not in (*TINY_ENV, *BUCKET_ENV_KEYS)}
    env.update(tiny_model_env(), **hub.env(), RUNPOD_VOLUME_PATH=str(volume), HF_HOME=str(paths.hf_home),
               HF_HUB_CACHE=str(paths.hub_cache), TORCH_HOME=str(paths.torch_home),
               F5TTS_IMAGE_CACHE=str(volume.parent / "image-hub"))
    env.update(extra)
    return env


def fetch_cmd(cache: Path, *args: str) -> list[str]:
    return [sys.executable, "provision.py", "fetch", "--cache", str(cache), *args]


def run_fetch(hub: FakeHub, cache: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fetch_cmd(cache, *args), cwd=ROOT, env=process_env(hub, cache.parent.parent),
                          capture_output=True, text=True, timeout=timeout)


def served(hub: FakeHub, ref: str) -> bytes:
    parsed = HubFile.parse(ref)
    return hub.files[(parsed.repo_id, parsed.filename)]


def assert_one_valid_copy(hub: FakeHub, cache: Path) -> None:
    """Every file of the model is in ``cache`` exactly once, byte for byte as served, and no temp
    file of any download is left."""
    for ref in REFS:
        parsed = HubFile.parse(ref)
        data = served(hub, ref)
        pointer = cache / parsed.repo_folder / "snapshots" / hub.commit / parsed.filename
        assert hashlib.sha256(pointer.read_bytes()).digest() == hashlib.sha256(data).digest(), ref
    blobs = sorted(p.name for p in cache.glob("models--*/blobs/*"))
    expected = sorted(
        hashlib.sha256(served(hub, r)).hexdigest() if r.endswith((".safetensors", ".bin"))
        else git_blob_sha1(served(hub, r))
        for r in REFS
    )
    assert blobs == expected  # one blob per file, named by the hub's ETag, no *.incomplete


@pytest.mark.process
def test_fetch_fills_an_empty_cache_and_then_makes_no_request(fake_hub, tmp_path):
    cache = tmp_path / "volume" / "models" / "hub"
    first = run_fetch(fake_hub, cache)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("downloaded ") == len(REFS)
    assert_one_valid_copy(fake_hub, cache)
    assert sorted(r.filename for r in fake_hub.gets()) == sorted(HubFile.parse(r).filename for r in REFS)

    requests_before = len(fake_hub.requests)
    second = run_fetch(fake_hub, cache)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("present ") == len(REFS)
    assert len(fake_hub.requests) == requests_before  # offline: not even a HEAD


@pytest.mark.process
def test_worker_first_start_downloads_into_the_volume_and_second_start_is_offline(fake_hub, start_worker, tmp_path):
    volume = tmp_path / "runpod-volume"
    env = process_env(fake_hub, volume)

    started = time.monotonic()
    first = start_worker(env)
    first_ready = time.monotonic() - started
    job = first.post("/runsync", {"input": JOB})
    assert job["status"] == "COMPLETED", job
    assert job["output"]["duration_s"] > 0
    first.stop()
    assert_one_valid_copy(fake_hub, volume / "models" / "hub")  # the volume default: <volume>/models/hub
    assert len(fake_hub.gets()) == len(REFS)

    requests_before = len(fake_hub.requests)
    started = time.monotonic()
    second = start_worker(env)
    second_ready = time.monotonic() - started
    assert second.post("/runsync", {"input": JOB})["status"] == "COMPLETED"
    assert len(fake_hub.requests) == requests_before, [r.filename for r in fake_hub.requests[requests_before:]]
    print(f"\nworker ready: first start (empty volume, download) {first_ready:.1f}s, "
          f"second start (warm volume, 0 requests) {second_ready:.1f}s")


@pytest.mark.process
def test_worker_starts_offline_from_runpods_cache_and_the_image(fake_hub, start_worker, tmp_path):
    """Nothing on the volume, downloads off: the checkpoint comes from RunPod's cached-models mount
    (which holds only the F5-TTS repo, no refs/main) and the vocoder from the image's cache."""
    volume = tmp_path / "runpod-volume"
    runpod_cache = CachePaths.from_env({"RUNPOD_VOLUME_PATH": str(volume)}).runpod_cache
    tiny_repo = HubFile.parse(TINY_ENV["F5TTS_CKPT_FILE"]).repo_folder
    shutil.copytree(Path(TINY_ENV["HF_HUB_CACHE"]) / tiny_repo, runpod_cache / tiny_repo, symlinks=True)
    shutil.rmtree(runpod_cache / tiny_repo / "refs")
    env = process_env(fake_hub, volume, HF_HUB_OFFLINE="1", F5TTS_IMAGE_CACHE=TINY_ENV["HF_HUB_CACHE"])

    worker = start_worker(env)
    assert worker.post("/runsync", {"input": JOB})["status"] == "COMPLETED"
    log = worker.log()
    assert f"from {runpod_cache / tiny_repo}/snapshots/" in log
    assert f"with the vocoder from {TINY_ENV['HF_HUB_CACHE']}/models--charactr--vocos-mel-24khz/snapshots/" in log
    assert fake_hub.requests == [] and not (volume / "models" / "hub").exists()


@pytest.mark.process
def test_concurrent_fetches_on_one_empty_cache_make_one_valid_copy(fake_hub, tmp_path):
    """N workers start at once against one empty volume: one downloads, the others wait on the lease
    and then find the files; nothing is downloaded twice and no file is torn."""
    n = 6
    cache = tmp_path / "volume" / "models" / "hub"
    fake_hub.chunk_delay_s = 0.02  # ~1.5 s for the whole model: the processes really overlap
    env = process_env(fake_hub, cache.parent.parent)
    procs = [subprocess.Popen(fetch_cmd(cache), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-2000:] for _, err in outputs]

    downloaders = [out for out, _ in outputs if "downloaded " in out]
    gets = {HubFile.parse(r).filename + "@" + HubFile.parse(r).repo_id: 0 for r in REFS}
    for request in fake_hub.gets():
        gets[f"{request.filename}@{request.repo_id}"] += 1
    waited = sum("waiting for another worker" in err for _, err in outputs)
    checkpoint = HubFile.parse(TINY_ENV["F5TTS_CKPT_FILE"])
    copies = list(cache.glob(f"{checkpoint.repo_folder}/blobs/*"))
    digests = {hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in copies if p.stat().st_size > 100_000}
    print(f"\nconcurrency: {n} processes, {len(downloaders)} downloaded, {waited} waited on the lease; "
          f"GETs per file: {json.dumps(gets)}; checkpoint sha256 on disk {digests} == served "
          f"{hashlib.sha256(served(fake_hub, TINY_ENV['F5TTS_CKPT_FILE'])).hexdigest()[:16]}")
    assert len(downloaders) == 1 and downloaders[0].count("downloaded ") == len(REFS)
    assert set(gets.values()) == {1}
    assert_one_valid_copy(fake_hub, cache)
    for out, _ in outputs:  # every process reports the same files at the same paths
        assert sorted(line.split()[-1] for line in out.splitlines()[:-1]) == sorted(
            line.split()[-1] for line in downloaders[0].splitlines()[:-1])


@pytest.mark.process
def test_a_killed_download_is_never_used_and_the_next_run_recovers(fake_hub, tmp_path):
    cache = tmp_path / "volume" / "models" / "hub"
    checkpoint = HubFile.parse(TINY_ENV["F5TTS_CKPT_FILE"])
    blobs = cache / checkpoint.repo_folder / "blobs"
    # huggingface_hub writes in 10 MiB pieces: a 24 MiB checkpoint streamed slowly (~4 s) is killed
    # once its temp file holds some of them.
    size = 24 * 2**20
    fake_hub.files[(checkpoint.repo_id, checkpoint.filename)] = os.urandom(size)
    fake_hub.chunk_delay_s = 0.01
    proc = subprocess.Popen(fetch_cmd(cache), cwd=ROOT, env=process_env(fake_hub, cache.parent.parent),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not any(p.stat().st_size for p in blobs.glob("*.incomplete")):
        assert proc.poll() is None, "provision.py exited before a partial download appeared"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup of any kind runs
    proc.wait()

    partial = list(blobs.glob("*.incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < size  # half-written, under a temp name only
    assert not (cache / checkpoint.repo_folder / "snapshots" / fake_hub.commit / checkpoint.filename).exists()
    assert not [p for p in blobs.iterdir() if not p.name.endswith(".incomplete") and p.stat().st_size == size]
    assert (cache / LEASE_FILE).exists()  # the dead worker's lease marker is still there
    print(f"\nkilled with {partial[0].stat().st_size:,} of {size:,} bytes in {partial[0].name}")

    fake_hub.chunk_delay_s = 0.0
    started = time.monotonic()
    # Waiting for the dead worker's lease to go stale (LEASE_S, 60 s) would give up at this lock timeout.
    rerun = run_fetch(fake_hub, cache, "--lock-timeout", "10")
    elapsed = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed {partial[0]}" in rerun.stderr and "left by an interrupted download" in rerun.stderr
    assert_one_valid_copy(fake_hub, cache)
    retry = fake_hub.gets(checkpoint.filename)[-1]
    assert (retry.range_start, retry.bytes_sent, retry.completed) == (0, size, True)  # restarted from byte 0
    print(f"rerun recovered in {elapsed:.1f}s")


@pytest.mark.process
def test_a_too_small_volume_fails_before_downloading_with_needed_and_available(fake_hub, tmp_path):
    cache = tmp_path / "volume" / "models" / "hub"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from f5worker.settings import load_settings\n"
        "settings = load_settings(os.environ)  # as every entry point does, before huggingface_hub is imported\n"
        "from f5worker import model_cache\n"
        "try:\n"
        "    model_cache.fetch(settings.model.file_refs(), Path(sys.argv[1]),\n"
        "                      free_bytes=lambda path: 1_000_000)\n"
        "except model_cache.VolumeTooSmall as err:\n"
        "    print(err)\n"
        "    sys.exit(3)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, str(cache)], cwd=ROOT,
                            env=process_env(fake_hub, cache.parent.parent), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    needed = sum(len(served(fake_hub, r)) for r in REFS)
    assert f"needs {needed:,} bytes" in result.stdout and "has 1,000,000 bytes" in result.stdout
    assert f"({human_bytes(needed)})" in result.stdout and "(1.0 MB)" in result.stdout  # as the validator writes sizes
    assert str(cache) in result.stdout
    assert fake_hub.gets() == [] and {r.method for r in fake_hub.requests} == {"HEAD"}  # metadata only
    assert not list(cache.glob("models--*/blobs/*"))
    print(f"\ntoo small: failed in {time.monotonic() - started:.2f}s with: {result.stdout.strip()}")


def test_sizes_and_the_filesystem_of_a_path_not_yet_created_as_the_validator_reads_them(tmp_path):
    assert nearest_existing(tmp_path / "volume" / "models" / "hub") == tmp_path
    assert nearest_existing(Path("/")) == Path("/")
    assert [human_bytes(n) for n in (0, 1_700_000, 55_000_000, 1_400_000_000)] == [
        "0 bytes", "1.7 MB", "55.0 MB", "1.40 GB"]


def _hold_lease(cache: Path, lease_s: float) -> subprocess.Popen[str]:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from f5worker.model_cache import cache_lease\n"
        "with cache_lease(Path(sys.argv[1]), lease_s=float(sys.argv[2])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(cache), str(lease_s)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.process
def test_a_live_holders_lease_is_respected_and_a_hung_ones_is_taken_over(tmp_path):
    """A worker on another host cannot be checked by PID: its lease is kept while its heartbeat runs
    and taken over once it stops (SIGSTOP stands in for a hung or vanished host)."""
    cache = tmp_path / "hub"
    holder = _hold_lease(cache, lease_s=2.0)
    try:
        # waited twice the lease and never took it over: the holder's heartbeat kept it
        with pytest.raises(ModelFilesMissing, match="another worker has been provisioning .* for over 4s"):
            with cache_lease(cache, timeout_s=4.0, lease_s=2.0):
                pass

        holder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with cache_lease(cache, timeout_s=30.0, lease_s=2.0):  # taken over, or ModelFilesMissing
            took_over = time.monotonic() - started
        print(f"\nhung holder's lease taken over after {took_over:.1f}s (lease 2.0s)")
    finally:
        holder.kill()
        holder.send_signal(signal.SIGCONT)
        holder.wait()


def test_etag_check_knows_sha256_and_git_blob_ids(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"weights")
    assert etag_matches(path, hashlib.sha256(b"weights").hexdigest()) is True
    assert etag_matches(path, git_blob_sha1(b"weights")) is True
    assert etag_matches(path, hashlib.sha256(b"other").hexdigest()) is False
    assert etag_matches(path, git_blob_sha1(b"other")) is False
    assert etag_matches(path, "W/opaque") is None
