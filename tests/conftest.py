"""Fixtures and hooks; the code behind them is in tests/support/ (shared with bench/).

The session runs on the tiny random-weight models written into a temp Hugging Face cache
(``tiny_models.TINY_HOME``): ``pytest_configure`` writes it and points ``os.environ`` at it before
any test module is imported (the worker's modules read ``HF_*`` at import), and
``pytest_unconfigure`` removes it and puts the environment back as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.bucket import BUCKET_ENV_KEYS, S3_CREDENTIALS, populate_bucket
from tests.support.fake_hub import FakeHub
from tests.support.net import free_port
from tests.support.process_guard import ProcessGuard
from tests.support.tiny_models import TINY_ENV, TINY_HOME, build_tiny_cache
from tests.support.worker_process import WorkerProcess

ENV_BEFORE = pytest.StashKey[dict[str, str]]()
GUARD = ProcessGuard()


def pytest_configure(config: pytest.Config) -> None:
    # Property tests assert behaviour, not speed: on a loaded 2-core machine input generation and
    # examples can be slow, which must not fail a run.
    settings.register_profile("worker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("worker")
    config.stash[ENV_BEFORE] = dict(os.environ)
    os.environ.update(TINY_ENV)
    for key in BUCKET_ENV_KEYS:
        os.environ.pop(key, None)
    shutil.rmtree(TINY_HOME, ignore_errors=True)
    build_tiny_cache(TINY_HOME / "hub")
    GUARD.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TINY_HOME, ignore_errors=True)
    if ENV_BEFORE in config.stash:
        os.environ.clear()
        os.environ.update(config.stash[ENV_BEFORE])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    GUARD.unmarked_test = None if item.get_closest_marker("process") else item.nodeid
    try:
        return (yield)
    finally:
        GUARD.unmarked_test = None


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A fresh fake Hugging Face hub serving the session's tiny models on 127.0.0.1."""
    hub = FakeHub.from_cache(Path(TINY_ENV["HF_HUB_CACHE"])).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in a thread of this process (not a process of its own)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket_env(moto_endpoint: str) -> dict[str, str]:
    """A fresh bucket holding the voices of :func:`tests.support.bucket.populate_bucket`."""
    from f5worker.storage import BucketSettings
    from s3_utils import make_client

    env = {"BUCKET_NAME": f"test-{uuid.uuid4().hex[:12]}", "BUCKET_ENDPOINT_URL": moto_endpoint, **S3_CREDENTIALS}
    populate_bucket(make_client(BucketSettings.from_env(env)), env["BUCKET_NAME"])
    return env


@pytest.fixture
def s3(bucket_env: dict[str, str]):
    from f5worker.storage import BucketSettings
    from s3_utils import make_client

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
    from f5worker.pipeline import Worker
    from f5worker.storage import BucketSettings
    from f5worker.voices import VoiceLibrary
    from s3_utils import make_client

    def make(env: dict[str, str], asr: bool = False) -> Worker:
        """``asr``: with a fresh (not yet loaded) recognizer on the tiny Whisper, as ``ASR_ENABLED=1``."""
        from f5worker.asr import SpeechRecognizer
        from f5worker.model_files import AsrSettings

        bucket = BucketSettings.from_env(env)
        client = make_client(bucket) if bucket.configured else None
        recognizer = SpeechRecognizer(AsrSettings.from_env({**TINY_ENV, "ASR_ENABLED": "1"}),
                                      Path(TINY_ENV["HF_HUB_CACHE"]), allow_download=False,
                                      device="cpu") if asr else None
        return Worker(model=tiny_model, voices=VoiceLibrary(client, bucket, recognizer=recognizer), bucket=bucket,
                      s3=client, asr=recognizer)

    return make


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``runpod_handler.py --rp_serve_api`` processes on the session's tiny models; ``env`` on top."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], wait: bool = True, preexec_fn: Callable[[], None] | None = None) -> WorkerProcess:
        tmpdir = tmp_path / f"worker-tmp-{len(started)}"
        tmpdir.mkdir()
        worker = WorkerProcess({**TINY_ENV, **env}, tmpdir, tmp_path / f"worker-{len(started)}.log", preexec_fn)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
