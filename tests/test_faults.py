"""Faults a deployed worker meets, injected for real: the S3 endpoint dying mid-transfer, refused
credentials, bad voices, broken model files, a full scratch disk, out-of-memory. Each time the
affected job gets a clear string error, no partial object is left in S3, nothing is left in the
scratch dir, and the worker serves the next job."""

from __future__ import annotations

import resource
import shutil
import signal
import time
import weakref
from pathlib import Path

import pytest
import torch

from f5worker.model_files import VOCODER_REPO
from tests.support.audio_bytes import encode_as, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT, populate_bucket
from tests.support.net import free_port
from tests.support.s3_servers import MotoProcess, S3Proxy
from tests.support.tiny_models import REVISION as TINY_REVISION
from tests.support.tiny_models import TINY_HOME, TINY_REPO

FAST = {"nfe_step": 4, "seed": 3}
# Retries and timeouts tightened so the bounded retries below stay short.
S3_LIMITS = {"S3_MAX_ATTEMPTS": "3", "S3_CONNECT_TIMEOUT_S": "2", "S3_READ_TIMEOUT_S": "2"}


def job(**fields) -> dict:
    return {"input": {"text": "A sentence to speak.", **FAST, **fields}}


def output_keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="outputs/").get("Contents", [])]


def observed(fault: str, outcome: str, seconds: float, retries: int) -> None:
    """One row of the fault table in the report (``pytest -s tests/test_faults.py | grep OBSERVED``)."""
    print(f"OBSERVED | {fault} | {outcome} | {seconds:.2f} s | {retries} connections met the dead endpoint")


def timed(call, *args):
    started = time.monotonic()
    result = call(*args)
    return result, time.monotonic() - started


@pytest.mark.process
def test_s3_endpoint_down_during_download_and_upload_then_back(start_worker, bucket_env, s3, moto_endpoint):
    bucket = bucket_env["BUCKET_NAME"]
    proxy = S3Proxy(moto_endpoint)
    worker = start_worker({**bucket_env, **S3_LIMITS, "BUCKET_ENDPOINT_URL": proxy.url})
    at_start = set(worker.tmpdir.iterdir())

    # Download: the endpoint dies 16 KB into bob.flac's body and stays down.
    proxy.cut_during(rf"GET /{bucket}/voices/bob\.flac", "response", 16 * 1024)
    failed, seconds = timed(worker.post, "/runsync", job(voice="bob"))
    assert failed["status"] == "FAILED", failed
    assert failed["error"].startswith("S3 error: endpoint unreachable or connection lost"), failed
    assert proxy.refused == 0  # a body cut mid-transfer is not retried within the job
    observed("S3 cut 16 KB into the voice download", failed["error"], seconds, 0)
    # Still down: the next job's listing is retried S3_MAX_ATTEMPTS times with backoff, then fails.
    refused = proxy.refused
    down, seconds = timed(worker.post, "/runsync", job(voice="carol"))
    assert down["status"] == "FAILED" and "endpoint unreachable" in down["error"], down
    assert proxy.refused - refused == 3
    observed("S3 down at the next job's listing", down["error"], seconds, proxy.refused - refused)
    proxy.restore()
    back = worker.post("/runsync", job(voice="bob"))
    assert back["status"] == "COMPLETED", back

    # Upload: the endpoint dies 2 KB into the output's PUT; the retries meet a dead endpoint.
    proxy.cut_during(rf"PUT /{bucket}/outputs/", "request", 2048)
    queued = worker.post("/run", job(voice="alice"))
    refused = proxy.refused
    failed, seconds = timed(worker.post, f"/status/{queued['id']}")
    assert failed["status"] == "FAILED" and "endpoint unreachable" in failed["error"], failed
    assert proxy.refused - refused == 2  # the cut attempt + 2 retries
    assert not [k for k in output_keys(s3, bucket) if queued["id"] in k]  # no partial object
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # and no orphaned parts
    observed("S3 cut 2 KB into the output PUT", failed["error"], seconds, proxy.refused - refused)
    proxy.restore()
    again = worker.post("/runsync", job(voice="alice"))
    assert again["status"] == "COMPLETED", again
    observed("S3 back: next jobs", f"{back['status']}, {again['status']}", 0, 0)

    # Hung endpoint (connections accepted, never answered): each attempt ends at the read timeout.
    proxy.stall()
    hung, seconds = timed(worker.post, "/runsync", job(voice="carol"))
    assert hung["status"] == "FAILED" and "ReadTimeoutError" in hung["error"], hung
    assert proxy.stalled == 3  # S3_MAX_ATTEMPTS attempts, each ended by S3_READ_TIMEOUT_S
    observed("S3 hangs (accepts, never answers)", hung["error"], seconds, proxy.stalled)
    proxy.restore()
    last = worker.post("/runsync", job(voice="carol"))
    assert last["status"] == "COMPLETED", last
    assert sorted(output_keys(s3, bucket)) == sorted(r["output"]["audio_key"] for r in (back, again, last))
    assert set(worker.tmpdir.iterdir()) == at_start
    proxy.close()


@pytest.mark.process
def test_refused_credentials_fail_s3_jobs_only(start_worker, tmp_path):
    """moto enforcing signatures as S3 does: a wrong secret is a 403 with a clear message; jobs
    that need no bucket still run on the same worker."""
    moto = MotoProcess(free_port(), tmp_path / "moto.log")
    try:
        key_id, secret = moto.enforce_credentials()
        env = {"BUCKET_NAME": "voices-auth", "BUCKET_ENDPOINT_URL": moto.url, "BUCKET_REGION": "us-east-1"}
        from f5worker.storage import BucketSettings
        from s3_utils import make_client

        populate_bucket(make_client(BucketSettings.from_env(
            {**env, "BUCKET_ACCESS_KEY_ID": key_id, "BUCKET_SECRET_ACCESS_KEY": secret})), env["BUCKET_NAME"])
        wrong_secret = "wrong-secret-0123456789abcdef"
        proxy = S3Proxy(moto.url)  # counts the requests that reach S3
        worker = start_worker({**env, **S3_LIMITS, "BUCKET_ENDPOINT_URL": proxy.url, "BUCKET_ACCESS_KEY_ID": key_id,
                               "BUCKET_SECRET_ACCESS_KEY": wrong_secret})
        at_start = set(worker.tmpdir.iterdir())
        requests_before = len(proxy.requests)
        refused, seconds = timed(worker.post, "/runsync", job(voice="alice"))
        assert refused["status"] == "FAILED", refused
        assert "refused the credentials (SignatureDoesNotMatch)" in refused["error"]
        assert "BUCKET_SECRET_ACCESS_KEY" in refused["error"]
        assert len(proxy.requests) - requests_before == 1, proxy.requests  # a 403 is not retried
        observed("wrong secret key (moto enforcing SigV4)", refused["error"], seconds, 0)
        inline = worker.post("/runsync", job(return_base64=True))
        assert inline["status"] == "COMPLETED" and "audio_base64" in inline["output"], inline
        assert set(worker.tmpdir.iterdir()) == at_start
        worker.stop()
        for text in (worker.log(), refused["error"]):  # at INFO, not even the key id
            assert wrong_secret not in text and secret not in text and key_id not in text
        proxy.close()
    finally:
        moto.stop()


def test_missing_bucket_is_named(make_worker, bucket_env, scratch):
    worker = make_worker({**bucket_env, "BUCKET_NAME": "no-such-bucket-anywhere"})
    error = worker.run({"id": "x", "input": job(voice="alice")["input"]})["error"]
    assert error == ("S3 error: bucket 'no-such-bucket-anywhere' does not exist "
                     "(check BUCKET_NAME and BUCKET_ENDPOINT_URL)")
    assert list(scratch.iterdir()) == []
    observed("missing bucket", error, 0, 0)


def bad_voices() -> dict[str, bytes]:
    wav = reference_wav_bytes()
    return {
        "empty.wav": b"",
        "notaudio.mp3": b"%PDF-1.4 this is a document, not audio\n" * 200,
        "corrupt.wav": wav[:8] + b"JUNKJUNKJUNKJUNK" + wav[24:],  # RIFF header with the format chunk destroyed
        "truncated.flac": encode_as(wav, "FLAC", "PCM_16")[:3000],  # a cut-off upload
        "silent.wav": _silent_wav(seconds=2),
        "long.wav": _silent_wav(seconds=30),
        "huge.wav": wav * 8,  # 2 MB, over VOICE_MAX_BYTES below
    }


def _silent_wav(seconds: int) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, np.zeros(8000 * seconds, dtype=np.float32), 8000, format="WAV", subtype="PCM_U8")
    return out.getvalue()


BAD_VOICE_ERRORS = {
    "empty": "voice 'empty': voices/empty.wav is empty",
    "notaudio": "voice 'notaudio': reference audio: not decodable audio",
    "corrupt": "voice 'corrupt': reference audio: not decodable audio",
    "truncated": "voice 'truncated': reference audio: not decodable audio",
    "silent": "voice 'silent': reference audio has less than 0.5 s of sound",
    "long": "voice 'long': reference audio: audio is 30.0 s long, over the 20 s limit",
    "huge": "voice 'huge' is 2048144 bytes, over the 1000000-byte limit",
    "badtext": "voice 'badtext': transcript voices/badtext.txt is not UTF-8 text",
    "bigtext": "voice 'bigtext': transcript voices/bigtext.txt is 20000 bytes, over the 16384-byte limit",
    "ghost": "voice 'ghost' not found",
    "mute": "voice 'mute' has no transcript voices/mute.txt",
}


@pytest.mark.process
def test_unusable_voices_each_fail_clearly(start_worker, bucket_env, s3, moto_endpoint):
    bucket = bucket_env["BUCKET_NAME"]
    for name, data in bad_voices().items():
        s3.put_object(Bucket=bucket, Key=f"voices/{name}", Body=data)
        s3.put_object(Bucket=bucket, Key=f"voices/{name.split('.')[0]}.txt", Body=ALICE_TEXT.encode())
    s3.put_object(Bucket=bucket, Key="voices/badtext.wav", Body=reference_wav_bytes())
    s3.put_object(Bucket=bucket, Key="voices/badtext.txt", Body=b"\xff\xfe\x00bad")
    s3.put_object(Bucket=bucket, Key="voices/bigtext.wav", Body=reference_wav_bytes())
    s3.put_object(Bucket=bucket, Key="voices/bigtext.txt", Body=b"a" * 20000)
    proxy = S3Proxy(moto_endpoint)
    worker = start_worker({**bucket_env, "BUCKET_ENDPOINT_URL": proxy.url,
                           "VOICE_MAX_BYTES": "1000000", "VOICE_MAX_SECONDS": "20"})
    at_start = set(worker.tmpdir.iterdir())
    for voice, expected in BAD_VOICE_ERRORS.items():
        result = worker.post("/runsync", job(voice=voice))
        assert result["status"] == "FAILED" and expected in result["error"], (voice, result)
        observed(f"voice {voice!r}", result["error"], 0, 0)
    # refused from the listing's sizes, before any download
    assert not [r for r in proxy.requests if r.startswith(f"GET /{bucket}/voices/") and
                any(n in r for n in ("huge.wav", "empty.wav", "bigtext.txt"))], proxy.requests
    assert worker.post("/runsync", job(voice="alice"))["status"] == "COMPLETED"
    assert set(worker.tmpdir.iterdir()) == at_start
    assert output_keys(s3, bucket) and len(output_keys(s3, bucket)) == 1
    proxy.close()


def damage(hub: Path, repo: str, filename: str, how: str) -> Path:
    """Break one file of a copied Hugging Face cache the way real caches break."""
    link = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / TINY_REVISION / filename
    blob = link.resolve()
    if how == "missing":
        link.unlink()
        blob.unlink()
    elif how == "truncated":  # an interrupted download
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    return link


MODEL_CACHE_FAULTS = [
    (TINY_REPO, "model.safetensors", "truncated", "cannot be loaded from"),
    (TINY_REPO, "vocab.txt", "missing", "is in none of the model caches"),
    (VOCODER_REPO, "pytorch_model.bin", "missing", "is in none of the model caches"),
    (VOCODER_REPO, "pytorch_model.bin", "truncated", "cannot be loaded from"),
]


@pytest.mark.process
def test_broken_model_cache_refuses_to_start_with_path_and_fix(start_worker, tmp_path):
    workers = []
    for i, (repo, filename, how, expected) in enumerate(MODEL_CACHE_FAULTS):
        hub = tmp_path / f"hf-{i}" / "hub"
        shutil.copytree(TINY_HOME / "hub", hub, symlinks=True)
        link = damage(hub, repo, filename, how)
        env = {"HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        named = [f"hf://{repo}/{filename}", str(hub)] if how == "missing" else [str(link), str(link.resolve())]
        workers.append((start_worker(env, wait=False), expected, named))
    for worker, expected, named in workers:  # started together: the model loads overlap
        assert worker.proc.wait(timeout=180) != 0
        log = worker.log()
        assert expected in log and "provision the volume" in log, log
        assert all(path in log for path in named), (named, log)  # for a bad file, the blob to delete too
        assert "Traceback" not in log
        assert list(worker.tmpdir.iterdir()) == []
        observed(f"model cache: {named[0].split('/')[-1]}", log.strip().splitlines()[-1][:160] + "...", 0, 0)


def test_out_of_gpu_memory_at_start_stops_the_worker_without_blaming_the_files(monkeypatch):
    """The model's files are sound; the machine cannot hold them. The worker exits naming the model,
    the device and the error, and does not tell the operator to delete good files."""
    import runpod_handler
    from f5worker import tts_model

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tts_model, "load_f5", out_of_memory)
    monkeypatch.setenv("RUNPOD_LOG_LEVEL", "INFO")  # main() sets it; restored after the test
    with pytest.raises(SystemExit) as stopped:
        runpod_handler.main()
    assert stopped.value.code == (f"cannot start: cannot load the tiny model on {tts_model.pick_device()}: "
                                  "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB")
    observed("torch.OutOfMemoryError loading the model", stopped.value.code, 0, 0)


@pytest.mark.process
def test_scratch_space_exhausted_while_writing_output(start_worker):
    """RLIMIT_FSIZE on the worker process stands in for a full /tmp: the write fails with EFBIG
    (SIGXFSZ ignored, as a full disk fails with ENOSPC), the job gets a clear error, the partial
    file goes with the job dir, and a smaller job then succeeds."""
    limit = 400_000

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    worker = start_worker({}, preexec_fn=limit_file_size)
    at_start = set(worker.tmpdir.iterdir())
    long_text = "This sentence is here to make the output far larger than the limit. " * 3
    full = worker.post("/runsync", job(text=long_text, output_format="wav"))
    assert full["status"] == "FAILED", full
    assert full["error"].startswith(f"scratch space exhausted in {worker.tmpdir} (File too large)"), full
    small = worker.post("/runsync", job(output_format="mp3"))
    assert small["status"] == "COMPLETED", small
    observed("RLIMIT_FSIZE 400 kB, wav output", f"{full['error']} / next job {small['status']}", 0, 0)
    assert set(worker.tmpdir.iterdir()) == at_start


class OutOfMemoryOnce:
    """The session's model, except that the first synthesis runs out of memory the way a CUDA
    allocation does, holding a large tensor in a reference cycle (frame -> exception -> frame)
    that only a garbage collection frees."""

    def __init__(self, model):
        self.model = model
        self.hog: weakref.ref | None = None

    def plan(self, *args):
        return self.model.plan(*args)

    def synthesize(self, *args, **kwargs):
        if self.hog is None:
            hog = torch.ones(25_000_000)  # 100 MB
            self.hog = weakref.ref(hog)
            err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            raise err
        return self.model.synthesize(*args, **kwargs)


def test_out_of_memory_frees_memory_and_the_next_job_runs(make_worker, bucket_env, scratch, monkeypatch):
    from f5worker import pipeline
    from f5worker.engine import memory

    released = []
    monkeypatch.setattr(pipeline, "release_memory", lambda: released.append(memory.release_memory()))
    worker = make_worker(bucket_env)
    worker.model = OutOfMemoryOnce(worker.model)
    failed = worker.run({"id": "oom", "input": job(voice="alice")["input"]})
    assert failed == {"error": "out of memory during synthesis (OutOfMemoryError); "
                               "retry with shorter text or fewer concurrent jobs"}
    # the tensor is freed before run() returns, although pytest's log capture keeps the exception
    assert worker.model.hog() is None
    assert len(released) == 1  # gc + CUDA cache release ran once (empty_cache is a no-op on CPU)
    assert list(scratch.iterdir()) == []
    assert "audio_key" in worker.run({"id": "after-oom", "input": job(voice="alice")["input"]})
    observed("torch.OutOfMemoryError in synthesize", f"{failed['error']} / 100 MB freed / next job ok", 0, 0)
