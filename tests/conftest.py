"""Shared fixtures: a tiny random-weight model in a temp HF cache, moto S3 on 127.0.0.1, and the
worker, in-process or as a real ``runpod_handler.py --rp_serve_api`` process."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
import requests
import soundfile as sf

from tests.fake_hub import fake_hub  # noqa: F401 - fixture: a Hugging Face hub on 127.0.0.1
from tests.net import free_port, stop_process
from tests.tiny_models import build_tiny_cache, tiny_model_env

ROOT = Path(__file__).resolve().parents[1]
TINY_HOME = Path(tempfile.mkdtemp(prefix="f5tts-tests-hf-"))
TINY_ENV = {
    "HF_HOME": str(TINY_HOME),
    "HF_HUB_CACHE": str(TINY_HOME / "hub"),
    "TORCH_HOME": str(TINY_HOME / "torch"),
    "HF_HUB_OFFLINE": "1",
    **tiny_model_env(),
}
S3_CREDENTIALS = {
    "BUCKET_ACCESS_KEY_ID": "AKIATESTKEYID0000000",
    "BUCKET_SECRET_ACCESS_KEY": "test-secret-key-never-logged",
    "BUCKET_REGION": "us-east-1",
}
ALICE_TEXT = "Some call me nature, others call me mother nature."
BUCKET_ENV_KEYS = ("BUCKET_NAME", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_REGION")

# Property tests assert behaviour, not speed: on a loaded 2-core machine input generation and
# examples can be slow, which must not fail a run.
settings.register_profile("worker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("worker")

# Workers built from this environment (in-process and as processes) read HF_*: point them at the tiny cache.
os.environ.update(TINY_ENV)
for _key in BUCKET_ENV_KEYS:
    os.environ.pop(_key, None)


def pytest_configure(config: pytest.Config) -> None:
    build_tiny_cache(TINY_HOME / "hub")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TINY_HOME, ignore_errors=True)


def reference_wav_bytes() -> bytes:
    return files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav").read_bytes()


def encode_as(data: bytes, fmt: str, subtype: str) -> bytes:
    wave, sr = sf.read(io.BytesIO(data), dtype="float32")
    out = io.BytesIO()
    sf.write(out, wave, sr, format=fmt, subtype=subtype)
    return out.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data), dtype="float32")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket_env(moto_endpoint: str) -> dict[str, str]:
    """A fresh bucket holding voices ``alice`` (wav), ``bob`` (flac) and ``carol`` (mp3), each with
    its transcript, and ``mute`` (wav, no transcript)."""
    from s3_utils import make_client
    from f5worker.storage import BucketSettings

    env = {"BUCKET_NAME": f"test-{uuid.uuid4().hex[:12]}", "BUCKET_ENDPOINT_URL": moto_endpoint, **S3_CREDENTIALS}
    populate_bucket(make_client(BucketSettings.from_env(env)), env["BUCKET_NAME"])
    return env


def populate_bucket(s3, bucket: str) -> None:
    """Create ``bucket`` with the voices of :func:`bucket_env`."""
    s3.create_bucket(Bucket=bucket)
    wav = reference_wav_bytes()
    voices = {
        "alice.wav": wav,
        "bob.flac": encode_as(wav, "FLAC", "PCM_16"),
        "carol.mp3": encode_as(wav, "MP3", "MPEG_LAYER_III"),
        "mute.wav": wav,
    }
    for name, data in voices.items():
        s3.put_object(Bucket=bucket, Key=f"voices/{name}", Body=data)
    for name in ("alice", "bob", "carol"):
        s3.put_object(Bucket=bucket, Key=f"voices/{name}.txt", Body=ALICE_TEXT.encode())


@pytest.fixture
def s3(bucket_env: dict[str, str]):
    from s3_utils import make_client
    from f5worker.storage import BucketSettings

    return make_client(BucketSettings.from_env(bucket_env))


@pytest.fixture(scope="session")
def tiny_model():
    from f5worker.model_files import ModelSources
    from f5worker.tts_model import TTSModel

    return TTSModel.load(ModelSources.from_env(TINY_ENV), Path(TINY_ENV["HF_HUB_CACHE"]), allow_download=False,
                         device="cpu")


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The container-scratch tier for in-process workers: a temp dir we can check is left empty."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def make_worker(tiny_model, scratch: Path) -> Callable[[dict[str, str]], object]:
    """An in-process ``Worker`` on the session's tiny model with the bucket settings of ``env``."""
    from runpod_handler import Worker
    from s3_utils import make_client
    from f5worker.storage import BucketSettings
    from f5worker.voices import VoiceLibrary

    def make(env: dict[str, str], asr: bool = False) -> Worker:
        """``asr``: with a fresh (not yet loaded) recognizer on the tiny Whisper, as ``ASR_ENABLED=1``."""
        from f5worker.asr import SpeechRecognizer
        from f5worker.model_files import AsrSettings

        bucket = BucketSettings.from_env(env)
        client = make_client(bucket) if bucket.configured else None
        recognizer = SpeechRecognizer(AsrSettings.from_env({**TINY_ENV, "ASR_ENABLED": "1"}), Path(TINY_ENV["HF_HUB_CACHE"]),
                                      allow_download=False, device="cpu") if asr else None
        return Worker(model=tiny_model, voices=VoiceLibrary(client, bucket, recognizer=recognizer), bucket=bucket,
                      s3=client, asr=recognizer)

    return make


class WorkerProcess:
    """``runpod_handler.py --rp_serve_api`` running as a real process on 127.0.0.1."""

    def __init__(self, env: dict[str, str], tmpdir: Path, log_path: Path,
                 preexec_fn: Callable[[], None] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmpdir
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in BUCKET_ENV_KEYS}
        full_env.update({"TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "runpod_handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(f"{self.url}/docs", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def post(self, path: str, payload: dict | None = None, timeout: float = 120) -> dict:
        response = requests.post(f"{self.url}{path}", json=payload, timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], wait: bool = True, preexec_fn: Callable[[], None] | None = None) -> WorkerProcess:
        tmpdir = tmp_path / f"worker-tmp-{len(started)}"
        tmpdir.mkdir()
        worker = WorkerProcess(env, tmpdir, tmp_path / f"worker-{len(started)}.log", preexec_fn)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
