"""Streaming, progress, several texts, OpenAI input and voice management through a real
``runpod_handler.py --rp_serve_api`` process.

What the SDK's local API does with a generator handler (runpod 1.12, rp_fastapi.py): ``/stream/{id}``
runs the queued job and answers once, with every yielded item in order; ``/runsync`` and
``/status/{id}`` answer with the list of yielded items (``return_aggregate_stream`` on RunPod).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.support.audio_bytes import decode, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5)  # 3 chunks
FAST = {"nfe_step": 4, "seed": 2}


class ProgressRecorder:
    """Stands in for RunPod's job-done/progress endpoint (RUNPOD_WEBHOOK_POST_OUTPUT) on 127.0.0.1."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, dict]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = urlsplit(self.path)
                recorder.posts.append((parts.path, parts.query, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/job-done/$ID?gpu=test"

    def progress_of(self, job_id: str, expected: int, timeout_s: float = 15) -> list[str]:
        """The progress messages posted for ``job_id``, once ``expected`` have arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [body for path, _, body in self.posts if path == f"/job-done/{job_id}"]
            if len(found) >= expected:
                assert all(body["status"] == "IN_PROGRESS" for body in found)
                return [body["output"] for body in found]
            time.sleep(0.1)
        raise AssertionError(f"only {self.posts} after {timeout_s}s")

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def recorder():
    rec = ProgressRecorder()
    yield rec
    rec.close()


def reassemble(items: list[dict]) -> bytes:
    assert [item["chunk"] for item in items] == list(range(len(items)))
    return b"".join(base64.b64decode(item["audio_base64"]) for item in items)


@pytest.mark.process
def test_streaming_worker(start_worker, recorder):
    worker = start_worker({"STREAMING": "1", "RUNPOD_WEBHOOK_POST_OUTPUT": recorder.url})

    queued = worker.post("/run", {"input": {"text": LONG_TEXT, "stream": True, **FAST}})
    streamed = worker.post(f"/stream/{queued['id']}")
    assert streamed["status"] == "COMPLETED", streamed
    *items, final = [entry["output"] for entry in streamed["stream"]]
    assert "error" not in final and final["chunks"] == len(items) >= 3
    wave, sr = decode(reassemble(items))  # a streamed wav job concatenates into a .wav file
    assert sr == 24_000 and len(wave) / sr == pytest.approx(final["duration_s"], abs=1e-3)
    assert all(len(item["audio_base64"]) < 1_000_000 for item in items)
    assert sorted(recorder.progress_of(queued["id"], 3)) == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]
    assert all("isStream=false" in query for _, query, _ in recorder.posts)

    # /runsync aggregates a stream job's items; they decode to the classic job's samples
    sync = worker.post("/runsync", {"input": {"text": "Streamed through runsync.", "stream": True,
                                              "output_format": "pcm", **FAST}})
    assert sync["status"] == "COMPLETED", sync
    *items, final = sync["output"]
    classic = worker.post("/runsync", {"input": {"text": "Streamed through runsync.", "output_format": "pcm", **FAST}})
    # a job without "stream" yields one item: the classic handler's result
    assert len(classic["output"]) == 1 and classic["output"][0]["duration_s"] == final["duration_s"]
    assert reassemble(items) == base64.b64decode(classic["output"][0]["audio_base64"])


@pytest.mark.process
def test_classic_worker_features(start_worker, bucket_env, s3, recorder):
    worker = start_worker({**bucket_env, "RUNPOD_WEBHOOK_POST_OUTPUT": recorder.url})
    bucket = bucket_env["BUCKET_NAME"]

    long_job = worker.post("/runsync", {"input": {"text": LONG_TEXT, "voice": "alice", **FAST}})
    assert long_job["status"] == "COMPLETED", long_job
    assert sorted(recorder.progress_of(long_job["id"], 3)) == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]

    upload = worker.post("/runsync", {"input": {"action": "upload_voice", "name": "erin", "transcript": ALICE_TEXT,
                                                "audio_base64": base64.b64encode(reference_wav_bytes()).decode()}})
    assert upload["status"] == "COMPLETED", upload
    assert upload["output"]["audio_key"] == "voices/erin.wav"
    listed = worker.post("/runsync", {"input": {"action": "list_voices"}})["output"]["voices"]
    assert "erin" in [v["name"] for v in listed]

    speech = worker.post("/runsync", {"input": {"model": "tts-1", "input": "OpenAI shaped.", "voice": "erin",
                                                "response_format": "opus", "speed": 1.1}})
    assert speech["status"] == "COMPLETED", speech
    assert speech["output"]["audio_key"] == f"outputs/{speech['id']}.ogg"
    assert decode(s3.get_object(Bucket=bucket, Key=speech["output"]["audio_key"])["Body"].read())[1] == 24_000

    queued = worker.post("/run", {"input": {"texts": ["First.", "Second one."], "voice": "erin", **FAST}})
    status = worker.post(f"/status/{queued['id']}")
    keys = [o["audio_key"] for o in status["output"]["outputs"]]
    assert keys == [f"outputs/{queued['id']}-{i}.wav" for i in range(2)]
    assert status["output"]["voice_cached"] is True  # prepared once, by the OpenAI job above

    deleted = worker.post("/runsync", {"input": {"action": "delete_voice", "name": "erin"}})
    assert deleted["output"]["deleted"] == ["voices/erin.txt", "voices/erin.wav"]

    for bad, expected in [({"text": "x", "stream": True}, "STREAMING=1"),
                          ({"action": "upload_voice", "name": "x", "transcript": "t",
                            "audio_url": "https://127.0.0.1:1/a.wav"}, "non-public"),
                          ({"input": "x", "response_format": "aac"}, "aac cannot be produced")]:
        failed = worker.post("/runsync", {"input": bad})
        assert failed["status"] == "FAILED" and expected in failed["error"], failed
