"""validate_storage_config.py: each check's PASS and FAIL path against real directories, a real
tiny-model cache and moto S3; the script itself run as a subprocess and its JSON parsed.

The network volume is played by a temp dir on /dev/shm (tmpfs: a filesystem other than /), the
container disk by a temp dir under /tmp (the same filesystem as /). Read-only directories are
made immutable with ``chattr +i``, since the tests run as root and root writes through any mode
bits. A full disk is a free-space requirement above what the filesystem really has.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

import validate_storage_config as v
from f5worker.model_cache import LEASE_FILE, LEASE_S, IncompleteFile, verify_complete
from f5worker.model_files import BUILTIN_CHECKPOINTS, PUBLISHED_FILE_BYTES, VOCODER_REPO
from f5worker.storage import JOB_DIR_PREFIX
from tests.support.bucket import BUCKET_ENV_KEYS, S3_CREDENTIALS
from tests.support.net import free_port
from tests.support.paths import ROOT
from tests.support.s3_servers import S3Proxy
from tests.support.tiny_models import TINY_ENV, TINY_REPO, tiny_model_env

TINY_HUB = Path(TINY_ENV["HF_HUB_CACHE"])
SHM = Path("/dev/shm")


@pytest.fixture
def volume() -> Iterator[Path]:
    """An empty stand-in network volume on its own filesystem."""
    path = Path(tempfile.mkdtemp(prefix="f5tts-validate-volume-", dir=SHM))
    assert os.stat(path).st_dev != os.stat("/").st_dev, "/dev/shm must be a filesystem other than /"
    yield path
    shutil.rmtree(path)


def volume_env(volume: Path) -> dict[str, str]:
    models = volume / "models"
    return {"RUNPOD_VOLUME_PATH": str(volume), "HF_HOME": str(models), "HF_HUB_CACHE": str(models / "hub"),
            "TORCH_HOME": str(models / "torch"), "HF_HUB_OFFLINE": "1", **tiny_model_env()}


@pytest.fixture
def provisioned(volume: Path) -> dict[str, str]:
    """The volume as provisioning leaves it: the tiny model and vocoder in the HF cache layout."""
    env = volume_env(volume)
    shutil.copytree(TINY_HUB, env["HF_HUB_CACHE"], symlinks=True)
    Path(env["TORCH_HOME"]).mkdir()
    return env


def settings(env: dict[str, str], scratch: Path, **kwargs) -> v.Settings:
    return v.Settings.from_env(env, scratch=scratch, **kwargs)


def snapshot_file(env: dict[str, str], repo: str, filename: str) -> Path:
    """The blob behind ``filename`` in the volume's copy of the cache (never the shared one)."""
    repo_dir = Path(env["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}"
    blob = next((repo_dir / "snapshots").glob(f"*/{filename}")).resolve()
    assert blob.is_relative_to(env["HF_HUB_CACHE"])
    return blob


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can create files in, root included (immutable flag)."""
    path = tmp_path / "read-only"
    path.mkdir()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem or user cannot set the immutable flag")
    try:
        with pytest.raises(PermissionError):
            (path / "x").write_bytes(b"x")
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# ---------------------------------------------------------------------------- env

def test_env_passes_with_every_cache_inside_the_volume(provisioned, scratch):
    result = v.check_env(settings(provisioned, scratch))
    assert result.status is v.Status.PASS, result
    assert {result.details[k]["location"] for k in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")} == {"volume"}


def test_env_warns_on_unset_legacy_only_and_scratch_caches(volume, scratch, tmp_path):
    legacy_env = {"RUNPOD_VOLUME_PATH": str(volume), "TRANSFORMERS_CACHE": "/root/.cache/tf"}
    legacy = v.check_env(settings(legacy_env, scratch))
    assert legacy.status is v.Status.WARN
    problems = "\n".join(legacy.details["problems"])
    assert "HF_HOME is not set" in problems and "only the legacy TRANSFORMERS_CACHE" in problems

    in_scratch = v.check_env(settings({**volume_env(volume), "HF_HOME": str(scratch / "hf"),
                                       "HF_HUB_CACHE": str(scratch / "hf" / "hub")}, scratch))
    assert in_scratch.status is v.Status.WARN and "in the scratch dir" in in_scratch.reason

    on_disk_env = {**volume_env(volume), "TORCH_HOME": str(tmp_path / "torch")}
    on_disk = v.check_env(settings(on_disk_env, tmp_path / "elsewhere"))
    assert on_disk.status is v.Status.WARN and "(container disk)" in on_disk.reason


# ---------------------------------------------------------------------------- volume

def test_volume_on_its_own_filesystem_passes(provisioned, scratch):
    result = v.check_volume(settings(provisioned, scratch))
    assert result.status is v.Status.PASS and result.details["free_bytes"] > 0


def test_volume_missing_or_on_the_container_disk_fails(tmp_path, scratch):
    missing = v.check_volume(settings({"RUNPOD_VOLUME_PATH": str(tmp_path / "none")}, scratch))
    assert missing.status is v.Status.FAIL and "does not exist" in missing.reason
    dirs = v.check_dirs(settings({"RUNPOD_VOLUME_PATH": str(tmp_path / "none")}, scratch))
    assert dirs.status is v.Status.FAIL and "the volume is not mounted" in dirs.reason
    same_fs = v.check_volume(settings({"RUNPOD_VOLUME_PATH": str(tmp_path)}, scratch))
    assert same_fs.status is v.Status.FAIL and "same filesystem as /" in same_fs.reason


# ---------------------------------------------------------------------------- dirs

def test_dirs_exist_and_take_a_probe_file(provisioned, scratch):
    result = v.check_dirs(settings(provisioned, scratch))
    assert result.status is v.Status.PASS, result
    assert not list(Path(provisioned["HF_HUB_CACHE"]).glob(".validate-probe-*"))


@pytest.mark.process
def test_read_only_cache_dir_fails(provisioned, scratch, read_only_dir):
    result = v.check_dirs(settings({**provisioned, "HF_HUB_CACHE": str(read_only_dir)}, scratch))
    assert result.status is v.Status.FAIL
    assert f"HF_HUB_CACHE {read_only_dir} is not writable (PermissionError" in result.reason


def test_missing_dirs_warn_when_creatable_and_fail_when_not(volume, scratch, tmp_path):
    creatable = v.check_dirs(settings(volume_env(volume), scratch))
    assert creatable.status is v.Status.WARN and "does not exist yet" in creatable.reason
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    blocked = v.check_dirs(settings({**volume_env(volume), "HF_HUB_CACHE": str(blocker / "hub")}, scratch))
    assert blocked.status is v.Status.FAIL and "cannot be created" in blocked.reason


# ---------------------------------------------------------------------------- space

def test_space_passes_when_the_model_is_cached(provisioned, scratch):
    result = v.check_space(settings(provisioned, scratch))
    assert result.status is v.Status.PASS
    assert result.details["to_download_bytes"] == 0 and result.details["cached_bytes"] > 100_000


def test_space_counts_published_sizes_of_files_still_to_download(volume, scratch):
    env = {**volume_env(volume), "F5TTS_MODEL": "F5TTS_v1_Base", "F5TTS_CKPT_FILE": "", "F5TTS_VOCAB_FILE": "",
           "F5TTS_MODEL_CONFIG": ""}
    result = v.check_space(settings(env, scratch))
    expected = PUBLISHED_FILE_BYTES[BUILTIN_CHECKPOINTS["F5TTS_v1_Base"]] + sum(
        PUBLISHED_FILE_BYTES[f"hf://{VOCODER_REPO}/{f}"] for f in ("config.yaml", "pytorch_model.bin"))
    assert result.details["to_download_bytes"] == expected


def test_space_fails_on_a_full_volume(provisioned, scratch):
    free = shutil.disk_usage(provisioned["HF_HUB_CACHE"]).free
    result = v.check_space(settings(provisioned, scratch, headroom_bytes=free + 10**9))
    assert result.status is v.Status.FAIL and result.reason.startswith("only ")


def test_space_warns_when_a_custom_file_size_is_unknown(volume, scratch):
    env = {**volume_env(volume), "F5TTS_CKPT_FILE": "hf://someone/custom/model.safetensors"}
    result = v.check_space(settings(env, scratch))
    assert result.status is v.Status.WARN and "hf://someone/custom/model.safetensors" in result.reason


# ---------------------------------------------------------------------------- tmp

def test_tmp_writable_with_space_passes(provisioned, scratch):
    assert v.check_tmp(settings(provisioned, scratch)).status is v.Status.PASS


@pytest.mark.process
def test_tmp_read_only_or_full_fails(provisioned, scratch, read_only_dir):
    read_only = v.check_tmp(settings(provisioned, read_only_dir))
    assert read_only.status is v.Status.FAIL and "not writable" in read_only.reason
    free = shutil.disk_usage(scratch).free
    full = v.check_tmp(settings(provisioned, scratch, min_scratch_free_bytes=free + 10**9))
    assert full.status is v.Status.FAIL and "free, below" in full.reason


# ---------------------------------------------------------------------------- model

@pytest.mark.parametrize("deep", [False, True])
def test_complete_tiny_cache_passes(provisioned, scratch, deep):
    result = v.check_model(settings(provisioned, scratch, deep=deep))
    assert result.status is v.Status.PASS, result
    checked = {ref: f["checked"] for ref, f in result.details["files"].items()}
    assert "safetensors header matches the size" in checked[f"hf://{TINY_REPO}/model.safetensors"]
    assert "zip directory reads" in checked[f"hf://{VOCODER_REPO}/pytorch_model.bin"]
    assert all(("sha256 matches" in how) == deep for how in checked.values())


def test_empty_cache_fails_naming_the_file_and_the_download(volume, scratch):
    result = v.check_model(settings(volume_env(volume), scratch))
    assert result.status is v.Status.FAIL
    assert f"hf://{TINY_REPO}/config.yaml is not in the cache" in result.reason
    assert len(result.details["problems"]) == 5
    assert f"hf download {TINY_REPO} config.yaml --cache-dir {volume}/models/hub" in result.fix


def test_truncated_checkpoint_and_vocoder_fail(provisioned, scratch):
    ckpt = snapshot_file(provisioned, TINY_REPO, "model.safetensors")
    vocoder = snapshot_file(provisioned, VOCODER_REPO, "pytorch_model.bin")
    os.truncate(ckpt, ckpt.stat().st_size - 1000)
    os.truncate(vocoder, vocoder.stat().st_size - 10)
    result = v.check_model(settings(provisioned, scratch))
    assert result.status is v.Status.FAIL
    problems = "\n".join(result.details["problems"])
    assert "model.safetensors is truncated" in problems and "pytorch_model.bin is truncated or corrupt" in problems
    assert str(ckpt) in result.fix  # delete the blob, not the snapshot link


def test_corrupt_bytes_of_the_right_size_need_deep(provisioned, scratch):
    ckpt = snapshot_file(provisioned, TINY_REPO, "model.safetensors")
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert v.check_model(settings(provisioned, scratch)).status is v.Status.PASS
    deep = v.check_model(settings(provisioned, scratch, deep=True))
    assert deep.status is v.Status.FAIL and "differs from the blob name" in deep.reason


def test_custom_model_from_plain_paths_on_the_volume(provisioned, volume, scratch):
    custom = volume / "custom"
    custom.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy(snapshot_file(provisioned, TINY_REPO, name), custom / name)
    env = {**provisioned, "F5TTS_MODEL": "mine", "F5TTS_CKPT_FILE": str(custom / "model.safetensors"),
           "F5TTS_MODEL_CONFIG": str(custom / "config.yaml")}
    result = v.check_model(settings(env, scratch, deep=True))
    assert result.status is v.Status.PASS, result
    assert "not a hub blob" in result.details["files"][str(custom / "model.safetensors")]["checked"]
    (custom / "model.safetensors").unlink()
    missing = v.check_model(settings(env, scratch))
    assert missing.status is v.Status.FAIL and missing.fix == f"copy the file to {custom / 'model.safetensors'}"


def test_unknown_model_name_fails(provisioned, scratch):
    result = v.check_model(settings({**provisioned, "F5TTS_MODEL": "F5TTS_v9", "F5TTS_CKPT_FILE": "",
                                     "F5TTS_MODEL_CONFIG": ""}, scratch))
    assert result.status is v.Status.FAIL and "F5TTS_v9" in result.reason


def test_safetensors_with_trailing_bytes_or_broken_header(tmp_path):
    path = tmp_path / "m.safetensors"
    tiny = next(TINY_HUB.glob(f"models--{TINY_REPO.replace('/', '--')}/snapshots/*/model.safetensors"))
    path.write_bytes(tiny.read_bytes() + b"x")
    with pytest.raises(IncompleteFile, match="longer than its header says"):
        verify_complete(path)
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(IncompleteFile, match="not valid JSON"):
        verify_complete(path)
    path.write_bytes((9).to_bytes(8, "little") + b'{"w": {}}')
    with pytest.raises(IncompleteFile, match="no valid data_offsets"):
        verify_complete(path)


def test_deep_check_of_a_git_blob(tmp_path):
    """Small hub files are stored under their git blob sha1, not their sha256."""
    data = b"model:\n  arch: {dim: 8}\n"
    blob = tmp_path / hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    blob.write_bytes(data)
    assert verify_complete(blob, deep=True).endswith("git sha1 matches the blob name")
    blob.write_bytes(data.replace(b"8", b"9"))
    with pytest.raises(IncompleteFile, match="content git sha1"):
        verify_complete(blob, deep=True)


# ---------------------------------------------------------------------------- imports

@pytest.mark.process
def test_imports_fail_when_a_library_is_broken(provisioned, scratch, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ImportError('simulated broken torch install')\n")
    env = {**os.environ, **provisioned, "PYTHONPATH": str(shadow)}
    result = v.check_imports(settings(env, scratch))
    assert result.status is v.Status.FAIL
    assert result.reason == "import torch failed: ImportError: simulated broken torch install"
    assert "f5_tts.model" in result.details["errors"]  # what needs torch fails too; soundfile does not
    assert "soundfile" in result.details["modules"]


# ---------------------------------------------------------------------------- s3

def test_s3_up_passes_and_leaves_no_probe(bucket_env, provisioned, scratch, s3):
    result = v.check_s3(settings({**provisioned, **bucket_env}, scratch))
    assert result.status is v.Status.PASS, result
    assert result.details["voices"] == 7  # 4 audio files + 3 transcripts
    assert s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix=v.PROBE_PREFIX)["KeyCount"] == 0


def test_s3_down_fails_at_the_first_try(bucket_env, provisioned, scratch, moto_endpoint):
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    result = v.check_s3(settings({**provisioned, **bucket_env, "BUCKET_ENDPOINT_URL": nothing_listens}, scratch))
    assert result.status is v.Status.FAIL and "unreachable (EndpointConnectionError)" in result.reason
    proxy = S3Proxy(moto_endpoint)
    proxy.cut()  # the endpoint drops every connection: counted, so a retry would show
    result = v.check_s3(settings({**provisioned, **bucket_env, "BUCKET_ENDPOINT_URL": proxy.url}, scratch))
    assert result.status is v.Status.FAIL and "unreachable (" in result.reason
    assert proxy.refused == 1  # no retry: the check reports, it does not wait
    proxy.close()


def test_s3_wrong_bucket_fails(bucket_env, provisioned, scratch):
    result = v.check_s3(settings({**provisioned, **bucket_env, "BUCKET_NAME": "no-such-bucket-here"}, scratch))
    assert result.status is v.Status.FAIL and "bucket does not exist" in result.reason


def test_s3_unconfigured_warns_and_half_credentials_fail(provisioned, scratch, bucket_env):
    assert v.check_s3(settings(provisioned, scratch)).status is v.Status.WARN
    half = {**provisioned, **bucket_env, "BUCKET_SECRET_ACCESS_KEY": ""}
    assert v.check_s3(settings(half, scratch)).status is v.Status.FAIL


@pytest.fixture(scope="module")
def iam_moto() -> Iterator[dict[str, dict[str, str]]]:
    """A separate ``moto_server`` process that checks signatures and IAM policies (the shared one
    accepts any credentials). Its first few calls, which create the users, keys and bucket, are
    let through unauthenticated (``INITIAL_NO_AUTH_ACTION_COUNT``); every later call is checked."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "9"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, "moto_server exited"
                time.sleep(0.1)
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "AKIAADMIN",
                 "aws_secret_access_key": "admin"}
        iam = boto3.client("iam", **admin)
        def allow(*actions: str) -> str:
            return json.dumps({"Version": "2012-10-17",
                               "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]})

        iam.create_user(UserName="worker")  # 1
        iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=allow("s3:*"))  # 2
        worker = iam.create_access_key(UserName="worker")["AccessKey"]  # 3
        iam.create_user(UserName="nobody")  # 4
        nobody = iam.create_access_key(UserName="nobody")["AccessKey"]  # 5
        iam.create_user(UserName="no-read")  # 6
        # moto checks HEAD bucket as "s3:HeadBucket" (AWS checks s3:ListBucket); everything but GetObject
        iam.put_user_policy(UserName="no-read", PolicyName="s3", PolicyDocument=allow(
            "s3:HeadBucket", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject"))  # 7
        no_read = iam.create_access_key(UserName="no-read")["AccessKey"]  # 8
        boto3.client("s3", **admin).create_bucket(Bucket="iam-bucket")  # 9
        base = {"BUCKET_NAME": "iam-bucket", "BUCKET_ENDPOINT_URL": endpoint, "BUCKET_REGION": "us-east-1"}
        yield {name: {**base, "BUCKET_ACCESS_KEY_ID": key["AccessKeyId"],
                      "BUCKET_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
               for name, key in (("worker", worker), ("nobody", nobody), ("no-read", no_read))}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.process
def test_s3_with_valid_iam_credentials_passes(iam_moto, provisioned, scratch):
    result = v.check_s3(settings({**provisioned, **iam_moto["worker"]}, scratch))
    assert result.status is v.Status.PASS, result


@pytest.mark.process
@pytest.mark.parametrize(("override", "code"), [
    ({"BUCKET_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"}, "InvalidAccessKeyId"),
    ({"BUCKET_SECRET_ACCESS_KEY": "wrong-secret"}, "SignatureDoesNotMatch"),
])
def test_s3_bad_credentials_fail(iam_moto, provisioned, scratch, override, code):
    result = v.check_s3(settings({**provisioned, **iam_moto["worker"], **override}, scratch))
    assert result.status is v.Status.FAIL
    endpoint = iam_moto["worker"]["BUCKET_ENDPOINT_URL"]
    assert result.reason == f"s3://iam-bucket at {endpoint}: credentials rejected ({code})"


@pytest.mark.process
def test_s3_key_without_permissions_is_access_denied(iam_moto, provisioned, scratch):
    result = v.check_s3(settings({**provisioned, **iam_moto["nobody"]}, scratch))
    assert result.status is v.Status.FAIL and "access denied at head_bucket (AccessDenied)" in result.reason


@pytest.mark.process
def test_s3_probe_is_removed_when_reading_it_back_is_denied(iam_moto, provisioned, scratch):
    result = v.check_s3(settings({**provisioned, **iam_moto["no-read"]}, scratch))
    assert result.status is v.Status.FAIL and "access denied at get_object (AccessDenied)" in result.reason
    worker = iam_moto["worker"]
    s3 = boto3.client("s3", endpoint_url=worker["BUCKET_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=worker["BUCKET_ACCESS_KEY_ID"],
                      aws_secret_access_key=worker["BUCKET_SECRET_ACCESS_KEY"])
    assert s3.list_objects_v2(Bucket="iam-bucket", Prefix=v.PROBE_PREFIX)["KeyCount"] == 0


# ---------------------------------------------------------------------------- leftovers

def test_leftovers_clean_passes(provisioned, scratch):
    (scratch / f"{JOB_DIR_PREFIX}running-now").mkdir()  # a job in progress is not a leftover
    assert v.check_leftovers(settings(provisioned, scratch)).status is v.Status.PASS


def test_stale_job_dirs_and_partial_downloads_warn(provisioned, scratch):
    stale = scratch / f"{JOB_DIR_PREFIX}crashed-abc"
    stale.mkdir()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    blobs = snapshot_file(provisioned, TINY_REPO, "model.safetensors").parent
    (blobs / "deadbeef.incomplete").write_bytes(b"partial")
    result = v.check_leftovers(settings(provisioned, scratch))
    assert result.status is v.Status.WARN
    assert result.details["stale_job_dirs"] == [str(stale)]
    assert result.details["incomplete"] == [str(blobs / "deadbeef.incomplete")]


def test_held_cache_lock_warns_and_a_released_one_does_not(provisioned, scratch):
    lock = Path(provisioned["HF_HUB_CACHE"]) / ".locks" / "models--tiny-random--f5-tts" / "abc.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as huggingface_hub holds it during a download
        held = v.check_leftovers(settings(provisioned, scratch))
    assert held.status is v.Status.WARN and "download into" in held.reason
    released = v.check_leftovers(settings(provisioned, scratch))
    assert released.status is v.Status.PASS and released.details["locks"] == {str(lock): "free"}


@pytest.fixture
def lease_holder_process(provisioned) -> Iterator[subprocess.Popen[str]]:
    """A process holding the volume cache's provisioning lease, as a worker fetching model files does."""
    script = ("import sys, time\n"
              "from pathlib import Path\n"
              "from f5worker.model_cache import cache_lease\n"
              "with cache_lease(Path(sys.argv[1])):\n"
              "    print('held', flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, provisioned["HF_HUB_CACHE"]], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.process
def test_live_provisioning_lease_warns_and_a_dead_holders_is_stale(provisioned, scratch, lease_holder_process):
    marker = Path(provisioned["HF_HUB_CACHE"]) / LEASE_FILE
    live = v.check_leftovers(settings(provisioned, scratch))
    assert live.status is v.Status.WARN and "is fetching model files into" in live.reason, live
    assert f"pid {lease_holder_process.pid} on " in live.reason and live.fix.startswith("wait for it")
    assert live.details["provisioning_lease"]["stale"] is False
    lease_holder_process.kill()  # SIGKILL: the marker stays behind
    lease_holder_process.wait()
    dead = v.check_leftovers(settings(provisioned, scratch))
    assert dead.status is v.Status.WARN and f"stale provisioning lease {marker}" in dead.reason, dead
    assert "it has exited" in dead.reason and f"rm {marker}" in dead.fix
    assert dead.details["provisioning_lease"]["stale"] is True


def test_provisioning_lease_of_another_host_is_stale_only_without_heartbeat(provisioned, scratch):
    marker = Path(provisioned["HF_HUB_CACHE"]) / LEASE_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)  # the volume is shared by this module's tests
    try:
        marker.write_text("filelock/2\npid=4242\nhost=another-pod\nmode=lease\ntoken=0123abcd\n"
                          f"duration={LEASE_S!r}\n")
        live = v.check_leftovers(settings(provisioned, scratch))
        assert live.status is v.Status.WARN and "held by pid 4242 on another-pod" in live.reason, live
        assert not live.details["provisioning_lease"]["stale"]
        last_heartbeat = time.time() - LEASE_S - 5
        os.utime(marker, (last_heartbeat, last_heartbeat))
        stale = v.check_leftovers(settings(provisioned, scratch))
        assert stale.status is v.Status.WARN and f"stale provisioning lease {marker}" in stale.reason, stale
        assert f"no heartbeat for over {LEASE_S:.0f} s" in stale.reason and f"rm {marker}" in stale.fix
    finally:
        marker.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the script

def script_env(extra: dict[str, str], tmpdir: Path) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if k not in BUCKET_ENV_KEYS}
    return {**env, "TMPDIR": str(tmpdir), **extra}


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "validate_storage_config.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.process
def test_script_json_all_good_on_the_tiny_cache_and_moto(provisioned, bucket_env, scratch):
    proc = run_script(["--json"], script_env({**provisioned, **bucket_env}, scratch))
    doc = json.loads(proc.stdout)
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert list(statuses) == list(v.CHECKS)
    not_imports = {name: s for name, s in statuses.items() if name != "imports"}
    assert set(not_imports.values()) == {"PASS"}, doc
    imports = next(c for c in doc["checks"] if c["name"] == "imports")
    assert not imports["details"]["errors"] and set(imports["details"]["modules"]) == set(v.IMPORTS)
    # PASS with a GPU; WARN (not FAIL) on this CPU-only machine
    assert imports["status"] == ("PASS" if imports["details"]["cuda"] else "WARN")
    assert proc.returncode == doc["exit_code"] == (0 if imports["status"] == "PASS" else 2)
    assert S3_CREDENTIALS["BUCKET_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr


@pytest.mark.process
def test_script_failing_run_exits_1_with_fixes(provisioned, bucket_env, scratch):
    ckpt = snapshot_file(provisioned, TINY_REPO, "model.safetensors")
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    env = script_env({**provisioned, **bucket_env, "BUCKET_NAME": "no-such-bucket-here"}, scratch)
    proc = run_script(["--skip", "imports"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("model      FAIL") and "is truncated" in line for line in lines)
    assert any(line.startswith("s3         FAIL") and "bucket does not exist" in line for line in lines)
    assert sum("fix: " in line for line in lines) >= 2 and "imports" not in proc.stdout.split("\n\n")[0]
    assert S3_CREDENTIALS["BUCKET_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr


@pytest.mark.process
def test_script_warnings_only_exit_2_and_bad_skip_64(provisioned, scratch):
    proc = run_script(["--json", "--skip", "imports,leftovers"], script_env(provisioned, scratch))
    doc = json.loads(proc.stdout)
    assert [c["status"] for c in doc["checks"] if c["name"] == "s3"] == ["WARN"]  # no bucket configured
    assert proc.returncode == doc["exit_code"] == 2 and doc["skipped"] == ["imports", "leftovers"]
    bad = run_script(["--skip", "s3,bogus"], script_env(provisioned, scratch))
    assert bad.returncode == 64 and "bogus" in bad.stderr


@pytest.mark.process
def test_validator_stays_torch_free_outside_the_imports_check(provisioned, bucket_env, scratch):
    code = ("import sys, validate_storage_config as v; v.main(['--skip', 'imports', '--json']); "
            "print(sorted(m for m in ('torch', 'f5_tts', 'transformers', 'runpod') if m in sys.modules))")
    env = script_env({**provisioned, **bucket_env}, scratch)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
