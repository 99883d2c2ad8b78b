"""The worker as a real process: ``runpod_handler.py --rp_serve_api`` answering HTTP."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.support.audio_bytes import decode
from tests.support.net import free_port
from tests.support.tiny_models import TINY_ENV

JOB = {"text": "Hello from the local API.", "voice": "alice", "nfe_step": 4, "seed": 1}


class ConnectionRecorder:
    """A TCP listener that counts connections: the worker's HF_ENDPOINT in the offline test."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.mark.process
def test_runsync_and_run_status_against_s3_with_no_network_at_start(start_worker, bucket_env, s3):
    recorder = ConnectionRecorder()
    # Downloads are allowed (HF_HUB_OFFLINE=0) and the hub is a listener that counts connections:
    # a warm cache must not touch it.
    worker = start_worker({**bucket_env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": recorder.url})
    # wandb (imported by f5_tts.model's trainer) makes two empty process-lifetime temp dirs at import
    at_start = set(worker.tmpdir.iterdir())

    sync = worker.post("/runsync", {"input": JOB})
    assert sync["status"] == "COMPLETED", sync
    output = sync["output"]
    assert output["audio_key"] == f"outputs/{sync['id']}.wav"
    wave, sr = decode(s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=output["audio_key"])["Body"].read())
    assert sr == output["sample_rate"] == 24_000
    assert len(wave) / sr == pytest.approx(output["duration_s"], abs=1e-3)

    queued = worker.post("/run", {"input": {**JOB, "output_format": "mp3"}})
    assert queued["status"] == "IN_PROGRESS"
    status = worker.post(f"/status/{queued['id']}")
    assert status["status"] == "COMPLETED", status
    assert status["output"]["audio_key"] == f"outputs/{queued['id']}.mp3"
    assert status["output"]["voice_cached"] is True
    stored = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=status["output"]["audio_key"])["Body"].read()
    assert decode(stored)[1] == 24_000

    bad = worker.post("/runsync", {"input": {**JOB, "voice": "../../etc/passwd"}})
    assert bad["status"] == "FAILED" and "input.voice" in bad["error"]
    assert worker.post("/runsync", {"input": JOB})["status"] == "COMPLETED"

    assert recorder.connections == 0
    assert set(worker.tmpdir.iterdir()) == at_start
    worker.stop()
    assert list(worker.tmpdir.iterdir()) == []
    log = worker.log()
    assert bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in log


@pytest.mark.process
def test_no_bucket_returns_base64(start_worker):
    worker = start_worker({})
    at_start = set(worker.tmpdir.iterdir())
    result = worker.post("/runsync", {"input": {"text": "No bucket here.", "nfe_step": 4}})
    assert result["status"] == "COMPLETED", result
    assert "audio_base64" in result["output"] and "audio_key" not in result["output"]
    assert set(worker.tmpdir.iterdir()) == at_start


@pytest.mark.process
@pytest.mark.parametrize("offline", ["1", "0"])
def test_missing_model_file_stops_the_worker_with_a_clear_message(start_worker, offline):
    unreachable = f"http://127.0.0.1:{free_port()}"
    worker = start_worker({"F5TTS_CKPT_FILE": "hf://tiny-random/f5-tts/missing.safetensors",
                           "HF_HUB_OFFLINE": offline, "HF_ENDPOINT": unreachable}, wait=False)
    assert worker.proc.wait(timeout=120) != 0
    log = worker.log()
    assert "hf://tiny-random/f5-tts/missing.safetensors" in log
    assert TINY_ENV["HF_HUB_CACHE"] in log
    assert "Traceback" not in log
