"""The job pipeline in-process: real tiny model, real moto S3, real encoders."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.support.audio_bytes import decode, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT

FAST = {"nfe_step": 4, "seed": 7}


def job(job_id: str = "job-1", **fields) -> dict:
    return {"id": job_id, "input": {"text": "Hello there, this is a test.", **FAST, **fields}}


def test_default_voice_without_bucket_returns_inline_wav(make_worker, scratch: Path):
    result = make_worker({}).run(job())
    assert "error" not in result, result
    wave, sr = decode(base64.b64decode(result["audio_base64"]))
    assert sr == result["sample_rate"] == 24_000
    assert result["duration_s"] == pytest.approx(len(wave) / sr, abs=1e-3)
    assert result["duration_s"] > 0.3
    assert result["voice"] == "default" and result["seed"] == 7
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("voice", ["alice", "bob", "carol"])
def test_s3_voice_output_uploaded_under_job_id(make_worker, bucket_env, s3, scratch: Path, voice: str):
    result = make_worker(bucket_env).run(job("abc-123", voice=voice))
    assert "error" not in result, result
    assert result["audio_key"] == "outputs/abc-123.wav"
    body = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=result["audio_key"])
    assert body["ContentType"] == "audio/wav"
    wave, sr = decode(body["Body"].read())
    assert sr == 24_000 and len(wave) / sr == pytest.approx(result["duration_s"], abs=1e-3)
    assert {"fetch_voice", "prepare_reference", "synthesize", "encode", "upload", "total"} <= set(result["timings_ms"])
    assert list(scratch.iterdir()) == []


def test_presigned_url_serves_the_object(make_worker, bucket_env):
    import requests

    result = make_worker(bucket_env).run(job(voice="alice"))
    response = requests.get(result["audio_url"], timeout=10)
    assert response.status_code == 200
    assert decode(response.content)[1] == 24_000


@pytest.mark.parametrize(("fmt", "content_type"), [("wav", "audio/wav"), ("flac", "audio/flac"),
                                                   ("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
def test_every_output_format_decodes(make_worker, bucket_env, s3, fmt: str, content_type: str):
    result = make_worker(bucket_env).run(job(f"fmt-{fmt}", voice="alice", output_format=fmt))
    assert result["audio_key"] == f"outputs/fmt-{fmt}.{fmt}"
    body = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=result["audio_key"])
    assert body["ContentType"] == content_type
    wave, sr = decode(body["Body"].read())
    assert sr == 24_000
    # lossy codecs pad a little at the edges
    assert len(wave) / sr == pytest.approx(result["duration_s"], abs=0.1)


def test_return_base64_with_bucket_skips_upload(make_worker, bucket_env, s3):
    result = make_worker(bucket_env).run(job("inline", voice="alice", return_base64=True, output_format="flac"))
    assert "audio_key" not in result
    assert decode(base64.b64decode(result["audio_base64"]))[1] == 24_000
    assert s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="outputs/").get("KeyCount") == 0


def test_second_job_on_same_voice_reuses_prepared_reference(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    first = worker.run(job("one", voice="alice"))
    second = worker.run(job("two", voice="alice"))
    assert (first["voice_cached"], second["voice_cached"]) == (False, True)
    assert "prepare_reference" in first["timings_ms"]
    assert "prepare_reference" not in second["timings_ms"]
    # replacing the voice (new ETag) invalidates the cache
    s3.put_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/alice.wav", Body=reference_wav_bytes()[:-4000])
    assert worker.run(job("three", voice="alice"))["voice_cached"] is False


def test_a_cached_voice_costs_one_list_and_the_output_one_put(make_worker, bucket_env, s3):
    """The S3 requests per job: the first job on a voice downloads it and its transcript once;
    later jobs only LIST (to see a replaced voice) and PUT the output."""
    worker = make_worker(bucket_env)
    calls: list[str] = []
    worker.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    worker.run(job("one", voice="alice"))
    assert sorted(calls) == ["GetObject", "GetObject", "ListObjectsV2", "PutObject"]
    calls.clear()
    assert worker.run(job("two", voice="alice"))["voice_cached"] is True
    assert calls == ["ListObjectsV2", "PutObject"]


def test_a_new_transcript_invalidates_the_cached_voice(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    assert worker.run(job("one", voice="bob"))["voice_cached"] is False
    s3.put_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/bob.txt", Body=b"Some call me nature.")
    assert worker.run(job("two", voice="bob"))["voice_cached"] is False
    assert worker.run(job("three", voice="bob"))["voice_cached"] is True


def test_voice_cache_is_bounded(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    worker.voices.cache_size = 2
    for voice in ("alice", "bob", "carol"):
        assert worker.run(job(voice, voice=voice))["voice_cached"] is False
    assert len(worker.voices._cache) == 2
    assert worker.run(job("again", voice="alice"))["voice_cached"] is False  # the oldest went first
    assert worker.run(job("carol2", voice="carol"))["voice_cached"] is True


def test_same_seed_same_audio(make_worker):
    worker = make_worker({})
    a = worker.run(job("a", seed=11))["audio_base64"]
    b = worker.run(job("b", seed=11))["audio_base64"]
    c = worker.run(job("c", seed=12))["audio_base64"]
    assert a == b != c


def test_ref_text_override_and_remove_silence(make_worker, bucket_env):
    result = make_worker(bucket_env).run(job(voice="mute", ref_text=ALICE_TEXT, remove_silence=True))
    assert "error" not in result, result


BAD_INPUTS = [
    ({"text": ""}, "input.text"),
    ({"text": 5}, "input.text"),
    ({"text": "x" * 6000}, "input.text"),
    ({"text": "a\x00b"}, "input.text"),
    ({"text": "\ud800"}, "input.text"),
    ({"voice": "../secrets"}, "input.voice"),
    ({"voice": "/etc/passwd"}, "input.voice"),
    ({"voice": "a" * 65}, "input.voice"),
    ({"voice": "ghost"}, "not found"),
    ({"voice": "mute"}, "no transcript"),
    ({"output_format": "aac"}, "input.output_format"),
    ({"speed": 0}, "input.speed"),
    ({"speed": "fast"}, "input.speed"),
    ({"nfe_step": 3.5}, "input.nfe_step"),
    ({"nfe_step": True}, "input.nfe_step"),
    ({"nfe_step": 10**30}, "input.nfe_step"),
    ({"cfg_strength": float("nan")}, "input.cfg_strength"),
    ({"seed": -1}, "input.seed"),
    ({"remove_silence": "yes"}, "input.remove_silence"),
    ({"bogus": 1}, "input.bogus"),
    # type confusion, extremes, non-UTF-8 and hostile names (see also tests/test_hostile.py)
    ({"text": ["Hello."]}, "input.text: must be a string, not list"),
    ({"text": {"a": 1}}, "input.text: must be a string, not dict"),
    ({"text": "x" * 1_000_000}, "input.text: is 1000000 characters"),
    ({"voice": 5}, "input.voice: must be a string"),
    ({"voice": "%2e%2e%2falice"}, "input.voice"),
    ({"voice": "alice\x00"}, "input.voice"),
    ({"voice": "\udc80"}, "input.voice"),
    ({"voice": "a" * 100_000}, "input.voice"),
    ({"ref_text": "\udfff"}, "input.ref_text: is not valid UTF-8"),
    ({"ref_text": 1}, "input.ref_text"),
    ({"ref_text": "x" * 1001}, "input.ref_text"),
    ({"output_format": ["wav"]}, "input.output_format"),
    ({"speed": float("inf")}, "input.speed"),
    ({"speed": -1e308}, "input.speed"),
    ({"speed": None}, "input.speed"),
    ({"seed": 2**64}, "input.seed"),
    ({"seed": 1.5}, "input.seed"),
    ({"cross_fade_duration": -1e-9}, "input.cross_fade_duration"),
    ({"return_base64": 1}, "input.return_base64"),
    ({"\ud800": 1}, "input.'\\ud800': unknown field"),
    ({"k" * 10_000: 1}, "input.'kkkk"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_INPUTS)
def test_bad_input_is_a_string_error_and_the_next_job_succeeds(make_worker, bucket_env, scratch, fields, expected):
    worker = make_worker(bucket_env)
    bad = worker.run({"id": "bad", "input": {"text": "Hello.", **fields}})
    assert set(bad) == {"error"} and isinstance(bad["error"], str)
    assert expected in bad["error"]
    assert len(bad["error"].encode("utf-8")) < 500  # echoes no huge or unencodable input
    assert "error" not in worker.run(job("good", voice="alice"))
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("raw", [None, [], "text", 3])
def test_input_that_is_not_an_object(make_worker, raw):
    assert "must be a JSON object" in make_worker({}).run({"id": "x", "input": raw})["error"]


def test_named_voice_without_bucket_is_a_clear_error(make_worker):
    assert "BUCKET_NAME is not set" in make_worker({}).run(job(voice="alice"))["error"]


def test_inline_output_over_the_limit_is_refused(make_worker, monkeypatch):
    from f5worker import delivery

    monkeypatch.setattr(delivery, "MAX_INLINE_BASE64_BYTES", 1000)
    error = make_worker({}).run(job())["error"]
    assert "inline limit" in error and "configure a bucket" in error


def test_inline_limit_is_the_exact_base64_length(make_worker, monkeypatch):
    from f5worker import delivery

    size = len(make_worker({}).run(job())["audio_base64"])
    monkeypatch.setattr(delivery, "MAX_INLINE_BASE64_BYTES", size)
    assert len(make_worker({}).run(job())["audio_base64"]) == size
    monkeypatch.setattr(delivery, "MAX_INLINE_BASE64_BYTES", size - 1)
    assert f"would be {size} bytes of base64" in make_worker({}).run(job())["error"]


def test_base64_length():
    from f5worker.formats import base64_length

    assert [base64_length(n) for n in range(10)] == [len(base64.b64encode(bytes(n))) for n in range(10)]
