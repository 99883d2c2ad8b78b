"""WORKER_MODE=http against the official ``openai`` package, unmodified, and plain HTTP: the worker runs
as a real process on 127.0.0.1 on the tiny model (``tests/support/worker_process.HttpWorkerProcess``)."""

from __future__ import annotations

import base64
import io
import json
import re
import string
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from tests.support.audio_bytes import reference_wav_bytes
from tests.support.bucket import ALICE_TEXT, S3_CREDENTIALS, populate_bucket
from tests.support.fake_hub import FakeHub
from tests.support.tiny_models import TINY_ENV
from tests.support.worker_process import HttpWorkerProcess

pytestmark = pytest.mark.process

FAST = {"seed": 7, "nfe_step": 4}
SHORT = "Hello from an OpenAI client."


def sentences(n: int) -> str:
    """``n`` numbered sentences without digits (normalisation leaves them as they are), each of the
    bytes of "Sentence number <i> is here.", which the chunk counts below were sized with."""
    return " ".join(f"Sentence number {string.ascii_lowercase[i % 26] * len(str(i))} is here." for i in range(n))


LONG = sentences(18)  # 3 chunks with the default voice
LONGER = sentences(24)  # 4 chunks
QUEUE = 4  # ENGINE_MAX_QUEUE of the main server: LONG and LONGER fit, LONG_OVER does not
LONG_OVER = LONG * 2


def start(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], wait: bool = True,
          health_port: bool = False) -> HttpWorkerProcess:
    tmp = tmp_path_factory.mktemp("http")
    (tmp / "tmp").mkdir()
    worker = HttpWorkerProcess({**TINY_ENV, **env}, tmp / "tmp", tmp / "worker.log", health_port)
    if wait:
        worker.wait_ready()
    return worker


@pytest.fixture(scope="module")
def bucket_env(moto_endpoint: str) -> dict[str, str]:
    from f5worker.storage import BucketSettings
    from s3_utils import make_client

    env = {"BUCKET_NAME": f"http-{uuid.uuid4().hex[:12]}", "BUCKET_ENDPOINT_URL": moto_endpoint, **S3_CREDENTIALS}
    populate_bucket(make_client(BucketSettings.from_env(env)), env["BUCKET_NAME"])
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory, bucket_env) -> Iterator[HttpWorkerProcess]:
    worker = start(tmp_path_factory, {**bucket_env, "ENGINE_MAX_QUEUE": str(QUEUE)})
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def client(server: HttpWorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def long_pcm(client: openai.OpenAI) -> bytes:
    """LONG as one create(): what every stream of it must add up to."""
    return client.audio.speech.create(model="f5-tts", voice="default", input=LONG, response_format="pcm",
                                      extra_body=FAST).content


def speak(client: openai.OpenAI, fmt: str, text: str = SHORT, **extra) -> bytes:
    return client.audio.speech.create(model="f5-tts", voice="default", input=text, response_format=fmt,
                                      extra_body={**FAST, **extra}).content


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24_000
    return sf.read(io.BytesIO(data), dtype="float32")


def log_time(line: str) -> float:
    """The time of a worker log line (``logging``'s default asctime, milliseconds after the comma)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for_log(server: HttpWorkerProcess, pattern: str, timeout_s: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if match := re.search(pattern, server.log(), re.MULTILINE):
            return match
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the worker's log:\n{server.log()}")


# ---------------------------------------------------------------- create(), every format

@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "wav", "pcm"])
def test_create_returns_every_format_decoded_at_24k(client, fmt):
    wave, sr = decode(speak(client, fmt), fmt)
    exact, _ = decode(speak(client, "pcm"), "pcm")  # the same seed: the same audio
    assert sr == 24_000 and len(exact) > 24_000 // 2
    if fmt in ("wav", "flac", "pcm"):
        np.testing.assert_allclose(wave, exact, atol=1 / 32767)
    else:  # lossy, and mp3 carries the encoder's delay
        assert len(wave) == pytest.approx(len(exact), abs=0.1 * sr)


def test_the_response_says_its_content_type_seed_and_rate(server):
    body = {"model": "tts-1", "input": SHORT, "voice": "default", **FAST}
    response = requests.post(f"{server.url}/v1/audio/speech", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
    assert response.headers["x-seed"] == "7" and response.headers["x-sample-rate"] == "24000"
    assert response.headers["transfer-encoding"] == "chunked"
    assert decode(response.content, "mp3")[1] == 24_000


def test_a_voice_object_and_native_fields_are_accepted(client):
    response = client.audio.speech.create(model="f5-tts", voice={"id": "alice"}, input=SHORT, response_format="wav",
                                          extra_body={**FAST, "cfg_strength": 1.5, "remove_silence": True})
    assert decode(response.content, "wav")[1] == 24_000


def test_the_text_fields_of_a_job_work_over_http(client, server):
    """Issue 16's fields reach the same contract: a pause is exact silence in the audio, markup we
    cannot read is a 400, and the native route reports what was spoken."""
    pcm = speak(client, "pcm", 'One. <break time="1s"/> Two.')
    silent = np.flatnonzero(np.diff(np.concatenate([[1], np.frombuffer(pcm, "<i2") != 0, [1]]).astype(np.int8)))
    assert np.diff(silent)[::2].max() >= 24_000  # a run of at least 1 s of zero samples
    with pytest.raises(openai.BadRequestError) as caught:
        speak(client, "pcm", "<speak>Hello</speak>")
    assert "cannot be read" in caught.value.body["message"]
    result = requests.post(f"{server.url}/v1/job", json={"input": {"text": "It costs $5.", **FAST}}).json()
    assert "five dollars" in result["normalized_text"] and "$" not in result["normalized_text"]


# ---------------------------------------------------------------- streaming

def test_streamed_audio_arrives_while_the_rest_is_synthesized(client, server, long_pcm):
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=LONG, response_format="pcm", extra_body=FAST) as response:
        job_id = response.headers["x-job-id"]
        pieces = response.iter_bytes()
        first = next(pieces)
        first_at = time.time()
        rest = b"".join(pieces)
    done = wait_for_log(server, rf"^.* job {job_id} done: .*$")
    assert first and first_at < log_time(done[0]), "the first bytes came only once the job was done"
    assert int(wait_for_log(server, rf"job {job_id}: .* chunks=(\d+)")[1]) == 3
    assert first + rest == long_pcm  # the stream is the file


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])
def test_a_streamed_file_decodes_whole(client, fmt, long_pcm):
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=LONG, response_format=fmt, extra_body=FAST) as response:
        data = b"".join(response.iter_bytes())
    wave, sr = decode(data, fmt)
    assert sr == 24_000 and len(wave) == pytest.approx(len(long_pcm) // 2, rel=0.02)


def test_sse_sends_deltas_of_the_audio_then_done(client, long_pcm):
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=LONG, response_format="pcm", stream_format="sse",
            extra_body=FAST) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    *deltas, done = events
    assert len(deltas) == 3 and {event["type"] for event in deltas} == {"speech.audio.delta"}
    assert b"".join(base64.b64decode(event["audio"]) for event in deltas) == long_pcm
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["input_tokens"] == len(LONG) and done["usage"]["output_tokens"] == len(deltas)


def test_a_client_that_goes_away_cancels_the_rest_and_leaves_no_files(client, server):
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=LONG, response_format="pcm", extra_body=FAST) as response:
        job_id = response.headers["x-job-id"]
        assert next(response.iter_bytes())
    cancelled = wait_for_log(server, rf"job {job_id} cancelled: the client went away after chunk (\d+) of (\d+)")
    assert int(cancelled[1]) < int(cancelled[2])
    assert not list(server.tmpdir.glob(f"*{job_id}*"))


# ---------------------------------------------------------------- errors as the openai package's exceptions

@pytest.mark.parametrize(("fields", "exception", "status", "param", "message"), [
    ({"voice": "nobody"}, openai.NotFoundError, 404, "voice", "voice 'nobody' not found"),
    ({"response_format": "aac"}, openai.BadRequestError, 400, "response_format", "aac cannot be produced here"),
    ({"extra_body": {"speed": 9}}, openai.BadRequestError, 400, "speed", "must be between 0.25 and 4"),
    ({"instructions": "Speak cheerfully."}, openai.BadRequestError, 400, "instructions", "cannot be honoured"),
    ({"extra_body": {"return_word_timings": True}}, openai.BadRequestError, 400, "return_word_timings",
     "comes back in a job's JSON result: send the job to /v1/job"),
    ({"input": LONG_OVER}, openai.APIStatusError, 413, "input", f"over the queue limit of {QUEUE}"),
])
def test_errors_surface_as_the_openai_packages_exceptions(client, fields, exception, status, param, message):
    body = {"model": "f5-tts", "voice": "default", "input": SHORT, **fields}
    with pytest.raises(exception) as caught:
        client.audio.speech.create(**body)
    assert caught.value.status_code == status
    error = caught.value.body
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"


def test_a_full_queue_is_a_429_with_retry_after(client, server):
    with client.audio.speech.with_streaming_response.create(
            model="f5-tts", voice="default", input=LONG, response_format="pcm",
            extra_body={**FAST, "nfe_step": 32}) as filling:
        next(filling.iter_bytes())  # its first chunk is done; the others are queued or running
        with pytest.raises(openai.RateLimitError) as caught:  # the filler's last chunk waits: no room for 4
            speak(client, "pcm", LONGER)
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["code"] == "queue_full" and "retry later" in caught.value.body["message"]
        filler_id = filling.headers["x-job-id"]
    wait_for_log(server, rf"job {filler_id} cancelled")  # the engine is free again for the next tests


def test_an_unknown_route_and_a_bad_body_are_openai_shaped(server):
    missing = requests.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    not_json = requests.post(f"{server.url}/v1/audio/speech", data=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"


# ---------------------------------------------------------------- concurrency

def test_concurrent_requests_each_get_their_own_audio(client):
    seeds = [11, 12, 13, 14]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda seed: speak(client, "pcm", SHORT, seed=seed), seeds))
    alone = [speak(client, "pcm", SHORT, seed=seed) for seed in seeds]
    assert together == alone and len(set(together)) == len(seeds)


# ---------------------------------------------------------------- models, voices, the native route

def test_models_list_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_voices_are_listed_uploaded_used_and_deleted(client, server):
    listed = requests.get(f"{server.url}/v1/audio/voices").json()["voices"]
    assert [(v["id"], v["name"]) for v in listed][:2] == [("default", "default"), ("alice", "alice")]
    created = client.audio.voices.create(name="dave", audio_sample=("dave.wav", reference_wav_bytes(), "audio/wav"),
                                         consent="not-needed-here", extra_body={"transcript": ALICE_TEXT})
    assert created.id == "dave" and created.name == "dave" and created.object == "audio.voice"
    assert "dave" in [v["id"] for v in requests.get(f"{server.url}/v1/audio/voices").json()["voices"]]
    wave, sr = decode(speak(client, "wav", voice="dave"), "wav")
    assert sr == 24_000 and len(wave) > 0
    with pytest.raises(openai.BadRequestError, match="already exists"):
        client.audio.voices.create(name="dave", audio_sample=("dave.wav", reference_wav_bytes()), consent="x",
                                   extra_body={"transcript": ALICE_TEXT})
    deleted = client.audio.voices.delete("dave")
    assert deleted.id == "dave" and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete("dave")
    with pytest.raises(openai.NotFoundError):
        speak(client, "wav", voice="dave")


def test_a_voice_uploaded_as_the_jobs_json_fields(server):
    body = {"name": "erin", "transcript": ALICE_TEXT, "audio_base64": base64.b64encode(reference_wav_bytes()).decode()}
    stored = requests.post(f"{server.url}/v1/audio/voices", json=body).json()
    assert stored["id"] == "erin" and stored["audio_key"] == "voices/erin.wav"
    assert requests.delete(f"{server.url}/v1/audio/voices/erin").json()["keys"] == ["voices/erin.txt",
                                                                                     "voices/erin.wav"]


def test_the_native_route_answers_what_the_queue_answers(server, make_worker, bucket_env):
    job_input = {"text": SHORT, "voice": "alice", "output_format": "flac", "return_base64": True, **FAST}
    over_http = requests.post(f"{server.url}/v1/job", json={"input": job_input}).json()
    in_process = make_worker(bucket_env).run({"id": "q", "input": job_input})
    skip = ("timings_ms", "voice_cached")
    assert {k: v for k, v in over_http.items() if k not in skip} == {k: v for k, v in in_process.items()
                                                                    if k not in skip}
    refused = requests.post(f"{server.url}/v1/job", json={"input": {"text": SHORT, "voice": "nobody"}})
    assert refused.status_code == 404
    assert refused.json() == make_worker(bucket_env).run({"id": "q", "input": {"text": SHORT, "voice": "nobody"}})


def test_the_native_route_streams_a_stream_job_as_json_lines(server, make_worker):
    job_input = {"text": LONG, "stream": True, "output_format": "wav", **FAST}
    response = requests.post(f"{server.url}/v1/job", json={"input": job_input}, stream=True)
    assert response.headers["content-type"] == "application/x-ndjson"
    *items, result = [json.loads(line) for line in response.iter_lines() if line]
    emitted = []
    expected = make_worker({}).run({"id": "s", "input": job_input}, emit=emitted.append)
    assert items == emitted and result["chunks"] == expected["chunks"] == len(items)


# ---------------------------------------------------------------- /ping, auth, the health port

def test_ping_answers_204_while_the_model_loads_then_200(tmp_path_factory, tmp_path):
    hub = FakeHub.from_cache(Path(TINY_ENV["HF_HUB_CACHE"])).start()
    hub.open.clear()  # the worker's download waits: the model is loading
    home = tmp_path / "volume" / "models"
    env = {**hub.env(), "RUNPOD_VOLUME_PATH": str(tmp_path / "volume"), "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "TORCH_HOME": str(home / "torch"),
           "F5TTS_IMAGE_CACHE": str(tmp_path / "image-hub")}
    worker = start(tmp_path_factory, env, wait=False)
    try:
        assert worker.wait_for_ping(lambda status: True) == 204
        speech = requests.post(f"{worker.url}/v1/audio/speech", json={"model": "x", "input": "Hi.", "voice": "default"})
        assert speech.status_code == 503 and speech.headers["retry-after"] == "5"
        assert speech.json()["error"]["code"] == "model_loading"
        hub.open.set()
        assert worker.wait_for_ping(lambda status: status != 204) == 200
        assert set(worker.pings) == {204, 200} and worker.pings.index(200) > worker.pings.index(204)
    finally:
        hub.open.set()
        worker.stop()
        hub.stop()


def test_ping_is_503_when_the_worker_cannot_serve(tmp_path_factory, tmp_path):
    empty = tmp_path / "empty"
    worker = start(tmp_path_factory, {"HF_HOME": str(empty), "HF_HUB_CACHE": str(empty / "hub"),
                                      "RUNPOD_VOLUME_PATH": str(tmp_path / "volume"),
                                      "F5TTS_IMAGE_CACHE": str(tmp_path / "image-hub")}, wait=False)
    try:
        assert worker.wait_for_ping(lambda status: status != 204) == 503
        client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.audio.speech.create(model="x", voice="default", input="Hi.")
        assert caught.value.status_code == 503 and caught.value.body["code"] == "worker_unavailable"
        assert "cannot start:" in caught.value.body["message"]
    finally:
        worker.stop()


def test_the_api_key_guards_every_route_but_ping_and_the_page(tmp_path_factory):
    worker = start(tmp_path_factory, {"HTTP_API_KEY": "sk-local-test"}, health_port=True)
    try:
        wrong = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        for path in ("/v1/audio/speech", "/v1/job", "/v1/audio/voices"):  # no Authorization header at all
            refused = requests.post(f"{worker.url}{path}", json={"input": "Hi.", "voice": "default"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        allowed = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="sk-local-test", max_retries=0)
        audio = allowed.audio.speech.create(model="x", voice="default", input="Hi.", response_format="wav",
                                            extra_body=FAST)
        assert decode(audio.content, "wav")[1] == 24_000
        assert requests.get(worker.ping_url).status_code == 200
        assert requests.get(f"{worker.url}/").status_code == 200
        assert "sk-local-test" not in worker.log()
        # PORT_HEALTH answers /ping alone
        health = worker.ping_url.removesuffix("/ping")
        assert requests.get(f"{health}/v1/models", headers={"Authorization": "Bearer sk-local-test"}).status_code == 404
    finally:
        worker.stop()
