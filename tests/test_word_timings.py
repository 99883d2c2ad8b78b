"""Word timings, subtitles and automatic voice transcripts through ``Worker.run``: real tiny
F5-TTS, real tiny Whisper, real moto S3."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import ass
import pandas
import pytest
import srt
import webvtt

from tests.support.audio_bytes import decode

FAST = {"nfe_step": 4, "seed": 3}


def job(job_id: str = "job-1", **fields) -> dict:
    return {"id": job_id, "input": {"text": "Hello there, this is a test.", **FAST, **fields}}


def assert_word_timings(words: list[dict], duration_s: float) -> None:
    assert words, "the tiny Whisper always emits at least one word"
    previous_end = 0.0
    for w in words:
        assert set(w) == {"word", "start", "end"} and isinstance(w["word"], str)
        assert w["word"].strip() == w["word"] != ""
        assert previous_end <= w["start"] <= w["end"] <= duration_s
        previous_end = w["end"]


def test_words_and_inline_subtitles_without_a_bucket(make_worker, scratch: Path):
    worker = make_worker({}, asr=True)
    first = worker.run(job(return_word_timings=True, subtitles="srt"))
    assert "error" not in first, first
    wave, sr = decode(base64.b64decode(first["audio_base64"]))
    assert first["duration_s"] == pytest.approx(len(wave) / sr, abs=1e-3)
    assert_word_timings(first["words"], first["duration_s"])
    cues = list(srt.parse(first["subtitles"]))
    assert " ".join(c.content for c in cues).split() == [w["word"] for w in first["words"]]
    assert cues[0].start.total_seconds() == pytest.approx(first["words"][0]["start"], abs=1e-3)
    assert {"load_asr", "word_timings"} <= set(first["timings_ms"])
    second = worker.run(job("job-2", subtitles="vtt"))
    assert "words" not in second and "load_asr" not in second["timings_ms"] and "word_timings" in second["timings_ms"]
    assert list(webvtt.from_string(second["subtitles"]))
    assert list(scratch.iterdir()) == []


def test_subtitles_uploaded_beside_the_audio(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env, asr=True)
    result = worker.run(job("abc-9", voice="alice", return_word_timings=True, subtitles="vtt"))
    assert "error" not in result, result
    assert result["audio_key"] == "outputs/abc-9.wav" and result["subtitles_key"] == "outputs/abc-9.vtt"
    assert "subtitles" not in result and result["subtitles_url"].startswith(bucket_env["BUCKET_ENDPOINT_URL"])
    body = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key="outputs/abc-9.vtt")
    assert body["ContentType"] == "text/vtt; charset=utf-8"
    cues = list(webvtt.from_string(body["Body"].read().decode("utf-8")))
    assert " ".join(c.text for c in cues).split() == [w["word"] for w in result["words"]]
    assert_word_timings(result["words"], result["duration_s"])


def test_ass_json_and_csv_carry_the_words_of_the_job(make_worker):
    worker = make_worker({}, asr=True)
    for fmt in ("ass", "json", "csv"):
        result = worker.run(job(f"job-{fmt}", return_word_timings=True, subtitles=fmt))
        assert "error" not in result, result
        words = result["words"]
        if fmt == "ass":
            events = ass.parse_string(result["subtitles"]).events
            assert " ".join(re.sub(r"\{\\k\d+\}", "", e.text) for e in events).split() == [w["word"] for w in words]
            assert events[0].start.total_seconds() == pytest.approx(words[0]["start"], abs=0.005)
        elif fmt == "json":
            assert json.loads(result["subtitles"]) == words
        else:
            rows = pandas.read_csv(io.StringIO(result["subtitles"]), dtype={"word": str}, keep_default_na=False)
            assert rows.to_dict("records") == words


def test_recognition_off_refuses_word_timings_before_synthesising(make_worker):
    worker = make_worker({})
    assert worker.run(job(return_word_timings=True)) == {
        "error": "input.return_word_timings: needs speech recognition, which is off on this endpoint (ASR_ENABLED)"}
    assert "input.subtitles" in worker.run(job(subtitles="srt"))["error"]


@pytest.mark.parametrize(("fields", "expected"), [({"subtitles": "sub"},
                                                   "input.subtitles: must be one of srt, vtt, ass, json, csv"),
                                                  ({"subtitles": 1}, "input.subtitles"),
                                                  ({"return_word_timings": "yes"}, "input.return_word_timings")])
def test_bad_recognition_fields(make_worker, fields, expected):
    assert expected in make_worker({}, asr=True).run(job(**fields))["error"]


def test_voice_without_transcript_is_transcribed_once_and_the_sidecar_reused(make_worker, bucket_env, s3):
    bucket = bucket_env["BUCKET_NAME"]
    worker = make_worker(bucket_env, asr=True)
    first = worker.run(job("one", voice="mute"))
    assert "error" not in first, first
    assert {"transcribe_reference", "store_transcript", "load_asr"} <= set(first["timings_ms"])
    sidecar = s3.get_object(Bucket=bucket, Key="voices/mute.txt")
    transcript = sidecar["Body"].read().decode("utf-8")
    assert transcript.strip() and sidecar["ContentType"].startswith("text/plain")

    second = worker.run(job("two", voice="mute"))
    assert second["voice_cached"] is True and "transcribe_reference" not in second["timings_ms"]
    # another worker (a fresh process elsewhere) reads the sidecar like any uploaded transcript
    other = make_worker(bucket_env, asr=True)
    third = other.run(job("three", voice="mute"))
    assert third["voice_cached"] is False and "transcribe_reference" not in third["timings_ms"]
    assert not other.asr.loaded
    assert s3.get_object(Bucket=bucket, Key="voices/mute.txt")["ETag"] == sidecar["ETag"]
    # the transcript in use is the stored one: same seed, same text, same audio as passing it explicitly
    explicit = other.run(job("four", voice="mute", ref_text=transcript))
    assert (s3.get_object(Bucket=bucket, Key=explicit["audio_key"])["Body"].read()
            == s3.get_object(Bucket=bucket, Key=third["audio_key"])["Body"].read())


def test_voice_without_transcript_is_refused_when_recognition_is_off(make_worker, bucket_env, s3):
    error = make_worker(bucket_env).run(job(voice="mute"))["error"]
    assert "has no transcript voices/mute.txt" in error
    assert s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/mute.txt").get("KeyCount") == 0


@pytest.mark.process
def test_local_api_end_to_end(start_worker, bucket_env, s3):
    """``runpod_handler.py --rp_serve_api`` with ``ASR_ENABLED=1``: a voice without transcript gets
    one, the response carries ``words``, and the SRT beside the audio parses."""
    worker = start_worker({**bucket_env, "ASR_ENABLED": "1"})
    request = {"text": "Word timings through the local API.", "voice": "mute", **FAST,
               "return_word_timings": True, "subtitles": "srt"}
    first = worker.post("/runsync", {"input": request})
    assert first["status"] == "COMPLETED", first
    output = first["output"]
    assert_word_timings(output["words"], output["duration_s"])
    assert output["subtitles_key"] == f"outputs/{first['id']}.srt"
    text = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=output["subtitles_key"])["Body"].read().decode()
    assert " ".join(c.content for c in srt.parse(text)).split() == [w["word"] for w in output["words"]]
    assert {"transcribe_reference", "store_transcript", "load_asr", "word_timings"} <= set(output["timings_ms"])

    second = worker.post("/runsync", {"input": request})["output"]
    assert second["voice_cached"] is True
    assert "transcribe_reference" not in second["timings_ms"] and "load_asr" not in second["timings_ms"]
    assert "asr=tiny-random/whisper (loaded on first use)" in worker.log()
