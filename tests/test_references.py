"""References that are right (issue 15): clips longer than the 12 s F5-TTS uses, a reference per
job, voices named by their file name, the listing's reasons, and presigned URLs for outputs.
In-process workers on the tiny models (the tiny Whisper where recognition is on) and moto S3."""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import requests

from f5worker import audio
from f5worker.contract import InputError, parse_job
from f5worker.formats import SAMPLE_RATE
from f5worker.voices import REF_MAX_S, clean_reference_wave
from tests.support.audio_bytes import long_clip, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT
from tests.support.https_server import https_server, make_certificate

FAST = {"nfe_step": 4, "seed": 5}
LONG_TEXT = " ".join([ALICE_TEXT] * 5)  # the whole of LONG_CLIP: five times the packaged clip's words
SR = 24_000


def job(job_id: str = "job-1", **fields) -> dict:
    return {"id": job_id, "input": {"text": "Hello there, this is a test.", **FAST, **fields}}


def put(s3, env: dict, key: str, body: bytes | str) -> str:
    return s3.put_object(Bucket=env["BUCKET_NAME"], Key=key, Body=body)["ETag"]


def head(s3, env: dict, key: str) -> dict:
    return s3.head_object(Bucket=env["BUCKET_NAME"], Key=key)


@pytest.fixture
def long_voice(s3, bucket_env) -> dict[str, str]:
    """``voices/long.wav`` (~30 s) with the transcript of all of it, as the earlier project's users keep them."""
    return {"clip": put(s3, bucket_env, "voices/long.wav", long_clip()),
            "transcript": put(s3, bucket_env, "voices/long.txt", LONG_TEXT)}


# ---------------------------------------------------------------- cutting at a pause

def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def words(count: int, pause_s: float = 0.15) -> list[np.ndarray]:
    return [part for _ in range(count) for part in (tone(0.4), quiet(pause_s))]


def test_a_long_pause_is_preferred_then_a_short_one_then_the_limit():
    limit = int(REF_MAX_S * SR)
    # words with short pauses, a 1.2 s pause at ~8.25 s, more words past 12 s: cut at the long pause
    wave = np.concatenate([*words(15), quiet(1.2), *words(15)])
    long_pause = 15 * int(0.55 * SR) - int(0.15 * SR)  # where the 15th word ends
    assert audio.cut_at_pause(wave, SR, limit) == long_pause
    # only short pauses: the last one that starts before 12 s
    wave = np.concatenate(words(40))
    cut = audio.cut_at_pause(wave, SR, limit)
    assert limit - int(0.55 * SR) <= cut <= limit and not wave[cut:cut + int(0.1 * SR)].any()
    assert wave[cut - 1] != 0  # the last word is whole
    # no pause at all: the limit; short enough: all of it
    assert audio.cut_at_pause(tone(20), SR, limit) == limit
    assert audio.cut_at_pause(tone(11), SR, limit) == len(tone(11))


def test_a_clip_up_to_12_s_is_prepared_as_before(tmp_path):
    path = tmp_path / "ref.wav"
    path.write_bytes(reference_wav_bytes())
    clip = clean_reference_wave(path)
    wave, sr = audio.read_mono(path)
    before = audio.resample(wave, sr, SAMPLE_RATE)[: int(REF_MAX_S * SAMPLE_RATE)]
    before = audio.trim_silence_edges(before, SAMPLE_RATE)
    assert not clip.clipped and np.array_equal(clip.wave, before)


def test_a_long_clip_is_cut_at_a_pause(tmp_path):
    path = tmp_path / "long.wav"
    path.write_bytes(long_clip())
    clip = clean_reference_wave(path)
    assert clip.clipped and clip.source_s == pytest.approx(29.9, abs=0.1)
    assert 3 <= len(clip.wave) / SAMPLE_RATE <= REF_MAX_S
    source = audio.trim_silence_edges(audio.resample(*audio.read_mono(path), SAMPLE_RATE), SAMPLE_RATE)
    end = len(clip.wave)
    assert np.array_equal(source[:end], clip.wave)  # the start of the sound, kept whole
    after = source[end:end + int(0.1 * SAMPLE_RATE)]
    assert 20 * np.log10(np.sqrt(np.mean(after.astype(np.float64) ** 2)) + 1e-10) < -40  # a pause follows


# ---------------------------------------------------------------- a long voice, recognition off

def test_a_long_voice_with_a_full_transcript_is_refused_without_recognition(make_worker, bucket_env, long_voice):
    worker = make_worker(bucket_env)
    error = worker.run(job(voice="long"))["error"]
    assert error.startswith("voice 'long' is 29.9 s long and F5-TTS uses at most 12 s of it (cut at a pause), so its "
                            "transcript voices/long.txt may cover more than the part used:")
    assert "upload_voice" in error and "ASR_ENABLED=1" in error
    assert "ref_text may cover more" in worker.run(job(voice="long", ref_text="Some call me nature."))["error"]
    listed = {v["name"]: v for v in worker.voices.list_voices()}
    assert listed["long"]["error"] == error
    assert worker.run(job(voice="alice"))["voice_cached"] is False  # a voice up to 12 s: as before


# ---------------------------------------------------------------- a long voice, recognition on

def test_a_long_voice_is_transcribed_once_where_it_is_cut_and_the_transcript_reused(make_worker, bucket_env, s3,
                                                                                     long_voice):
    worker = make_worker(bucket_env, asr=True)
    first = worker.run(job("one", voice="long", return_base64=True))
    assert "error" not in first, first
    assert {"transcribe_reference", "store_transcript"} <= set(first["timings_ms"])
    stored = head(s3, bucket_env, "voices/long.clip.txt")
    assert stored["Metadata"] == {"voice-pair": long_voice["clip"].strip('"'),
                                  "of-transcript": long_voice["transcript"].strip('"')}
    assert s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key="voices/long.txt")["Body"].read().decode() == LONG_TEXT

    second = worker.run(job("two", voice="long", return_base64=True))
    assert second["voice_cached"] is True and "transcribe_reference" not in second["timings_ms"]
    restarted = make_worker(bucket_env, asr=True)  # a fresh worker reads the stored transcript
    third = restarted.run(job("three", voice="long", return_base64=True))
    assert third["voice_cached"] is False and "transcribe_reference" not in third["timings_ms"]
    assert not restarted.asr.loaded and third["audio_base64"] == first["audio_base64"]
    # the job's ref_text may cover more too: the same transcript of the part used
    fourth = restarted.run(job("four", voice="long", ref_text=LONG_TEXT, return_base64=True))
    assert fourth["audio_base64"] == first["audio_base64"] and not restarted.asr.loaded

    listed = {v["name"]: v for v in worker.voices.list_voices()}
    assert listed["long"]["error"] is None and "long.clip" not in listed


def test_a_new_transcript_or_clip_makes_the_stored_one_stale(make_worker, bucket_env, s3, long_voice):
    worker = make_worker(bucket_env, asr=True)
    assert "error" not in worker.run(job("one", voice="long"))
    new_text = put(s3, bucket_env, "voices/long.txt", "A new transcript of all thirty seconds.")
    again = make_worker(bucket_env, asr=True).run(job("two", voice="long"))
    assert "transcribe_reference" in again["timings_ms"]
    replaced = head(s3, bucket_env, "voices/long.clip.txt")
    assert replaced["Metadata"]["of-transcript"] == new_text.strip('"')
    new_clip = put(s3, bucket_env, "voices/long.wav", long_clip(repeats=4))
    third = make_worker(bucket_env, asr=True).run(job("three", voice="long"))
    assert "transcribe_reference" in third["timings_ms"]
    assert head(s3, bucket_env, "voices/long.clip.txt")["Metadata"]["voice-pair"] == new_clip.strip('"')


def test_a_long_voice_without_transcript_gets_one_of_the_part_used(make_worker, bucket_env, s3):
    put(s3, bucket_env, "voices/quiet.wav", long_clip())
    worker = make_worker(bucket_env, asr=True)
    first = worker.run(job("one", voice="quiet"))
    assert "transcribe_reference" in first["timings_ms"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/quiet.")["Contents"]]
    assert sorted(keys) == ["voices/quiet.txt", "voices/quiet.wav"]  # Whisper's transcript is of the part used
    later = make_worker(bucket_env, asr=True)
    assert "transcribe_reference" not in later.run(job("two", voice="quiet"))["timings_ms"] and not later.asr.loaded


# ---------------------------------------------------------------- voice names

@pytest.mark.parametrize("voice", ["Kurt_12s.wav", "alice.WAV", "bob.flac", "a-b.ogg", "x.mp3"])
def test_a_file_name_is_a_voice(voice):
    assert parse_job({"text": "Hi.", "voice": voice}).voice == voice


@pytest.mark.parametrize("voice", ["alice.txt", "a.b.wav", "../alice.wav", "voices/alice.wav", "alice.wav/",
                                   ".wav", "alice.wav.wav", "alice .wav", "alice.wavx", f"{'a' * 65}.wav"])
def test_a_file_name_is_still_a_voice_name(voice):
    with pytest.raises(InputError, match="input.voice: must be a voice name"):
        parse_job({"text": "Hi.", "voice": voice})


def test_a_file_name_means_exactly_that_object(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    assert worker.run(job("one", voice="alice.wav"))["voice_cached"] is False
    assert worker.run(job("two", voice="alice"))["voice_cached"] is True  # the same clip, prepared once
    assert worker.run(job("three", voice="bob.flac"))["voice"] == "bob.flac"
    missing = worker.run(job("four", voice="bob.wav"))["error"]
    assert missing == "voice 'bob.wav' not found: no voices/bob.wav in the bucket"
    assert "no voices/alice.WAV" in worker.run(job("five", voice="alice.WAV"))["error"]
    put(s3, bucket_env, "voices/alice.mp3", b"not audio at all")  # alice.wav still wins for "alice"
    assert "error" not in worker.run(job("six", voice="alice"))
    assert "voice 'alice.mp3': reference audio: not decodable" in worker.run(job("seven", voice="alice.mp3"))["error"]


def test_listing_reports_what_it_cannot_use_and_why(make_worker, bucket_env, s3, long_voice):
    for key in ("voices/my voice.wav", "voices/old/dave.wav", "voices/john.doe.flac"):
        put(s3, bucket_env, key, reference_wav_bytes())
    put(s3, bucket_env, "voices/notes.md", "not a voice")
    listed = {v["name"]: v for v in make_worker(bucket_env).run({"input": {"action": "list_voices"}})["voices"]}
    assert sorted(listed) == ["alice", "bob", "carol", "default", "john.doe", "long", "mute", "my voice", "old/dave"]
    assert listed["my voice"]["error"] == ("voices/my voice.wav: 'my voice' is not a voice name (1-64 letters, digits, "
                                           "'-' or '_', starting with a letter or digit, no folder); rename the clip "
                                           "and its transcript to use it")
    assert listed["old/dave"]["error"].startswith("voices/old/dave.wav: 'old/dave' is not a voice name")
    assert listed["john.doe"]["format"] == "flac"
    assert listed["mute"]["error"] == "voice 'mute' has no transcript voices/mute.txt; upload one or pass ref_text"
    assert listed["long"]["error"].startswith("voice 'long' is 29.9 s long")
    assert [v["error"] for v in (listed["alice"], listed["bob"], listed["carol"])] == [None] * 3
    with_asr = {v["name"]: v for v in make_worker(bucket_env, asr=True).voices.list_voices()}
    assert with_asr["long"]["error"] is None and with_asr["mute"]["error"] is None


def test_listing_reads_a_clip_length_only_for_a_long_transcript(make_worker, bucket_env, s3, long_voice):
    voices = make_worker(bucket_env).voices
    reads: list[str] = []
    voices.client.meta.events.register("before-parameter-build.s3.GetObject",
                                       lambda params, **_: reads.append(params["Key"]))
    voices.list_voices()
    assert sorted(reads) == ["voices/alice.txt", "voices/bob.txt", "voices/carol.txt", "voices/long.txt",
                             "voices/long.wav"]
    reads.clear()
    voices.list_voices()
    assert reads == []  # the length is remembered with the clip's ETag


# ---------------------------------------------------------------- a reference per job

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_reference_in_the_job_with_its_text(make_worker):
    worker = make_worker({})
    clip = b64(reference_wav_bytes())
    first = worker.run(job("one", ref_audio_base64=clip, ref_text=ALICE_TEXT))
    assert "error" not in first, first
    assert first["voice"] is None and first["voice_cached"] is False and "prepare_reference" in first["timings_ms"]
    second = worker.run(job("two", ref_audio_base64=clip, ref_text=ALICE_TEXT))
    assert second["voice_cached"] is True and "prepare_reference" not in second["timings_ms"]
    assert second["audio_base64"] == first["audio_base64"]
    other_text = worker.run(job("three", ref_audio_base64=clip, ref_text="Some call me nature."))
    assert other_text["voice_cached"] is False
    assert worker.run(job("four", ref_audio_base64=clip))["error"] == (
        "input.ref_text: is needed with a reference clip (ref_audio_base64 or ref_audio_url): speech recognition, "
        "which would transcribe it, is off here (ASR_ENABLED)")
    error = worker.run(job("five", ref_audio_base64=b64(long_clip()), ref_text=LONG_TEXT))["error"]
    assert error.startswith("ref_audio is 29.9 s long and F5-TTS uses at most 12 s of it (cut at a pause), so "
                            "ref_text may cover more than the part used: send at most 12 s of audio with its "
                            "ref_text, or set ASR_ENABLED=1")


def test_a_reference_in_the_job_transcribed_once(make_worker):
    worker = make_worker({}, asr=True)
    clip = b64(long_clip())
    first = worker.run(job("one", ref_audio_base64=clip, ref_text=LONG_TEXT))
    assert "error" not in first and "transcribe_reference" in first["timings_ms"]
    second = worker.run(job("two", ref_audio_base64=clip, ref_text=LONG_TEXT))
    assert second["voice_cached"] is True and "transcribe_reference" not in second["timings_ms"]
    untranscribed = worker.run(job("three", ref_audio_base64=b64(reference_wav_bytes())))
    assert "transcribe_reference" in untranscribed["timings_ms"]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"voice": "alice"}, "input.voice: give a voice or a reference clip (ref_audio_base64 or ref_audio_url), not both"),
    ({"ref_audio_url": "https://example.com/a.wav"}, "input.ref_audio_base64: give the audio as ref_audio_base64 or"),
    ({"ref_audio_base64": "not base64!"}, "input.ref_audio_base64: is not valid base64"),
])
def test_bad_job_references(make_worker, fields, expected):
    raw = {"ref_audio_base64": b64(reference_wav_bytes()), "ref_text": ALICE_TEXT, **fields}
    assert expected in make_worker({}).run(job(**raw))["error"]


@pytest.mark.parametrize(("url", "expected"), [
    ("http://example.com/a.wav", "input.ref_audio_url: must be an https:// URL"),
    ("https://127.0.0.1/a.wav", "ref_audio_url: host '127.0.0.1' resolves to non-public address 127.0.0.1"),
    ("https://169.254.169.254/latest/meta-data/", "resolves to non-public address 169.254.169.254"),
    ("https://[::1]/a.wav", "non-public address"),
    ("https://localhost:9/a.wav", "resolves to non-public address"),
    ("https://user:pw@example.com/a.wav", "ref_audio_url: URLs with credentials are refused"),
])
@pytest.mark.process  # the URL guard imports the runpod SDK, whose py-cpuinfo starts a subprocess
def test_hostile_reference_urls_are_refused(make_worker, url, expected):
    assert expected in make_worker({}).run(job(ref_audio_url=url, ref_text=ALICE_TEXT))["error"]


class ClipServer(BaseHTTPRequestHandler):
    body = b""
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.process  # openssl makes the certificate; the URL guard imports the runpod SDK
def test_a_reference_by_url_is_fetched_each_time_and_prepared_once(make_worker, tmp_path, monkeypatch):
    from runpod.serverless.utils import rp_ssrf

    cert, key = make_certificate(tmp_path)
    ClipServer.body, ClipServer.requests = reference_wav_bytes(), 0
    server, base = https_server(ClipServer, cert, key)
    monkeypatch.setattr(rp_ssrf, "is_safe_address", lambda ip: ip == "127.0.0.1")  # this server only
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    try:
        worker = make_worker({})
        first = worker.run(job("one", ref_audio_url=f"{base}/clip.wav", ref_text=ALICE_TEXT))
        second = worker.run(job("two", ref_audio_url=f"{base}/clip.wav", ref_text=ALICE_TEXT))
        inline = worker.run(job("three", ref_audio_base64=b64(reference_wav_bytes()), ref_text=ALICE_TEXT))
    finally:
        server.shutdown()
    assert "error" not in first, first
    assert (first["voice_cached"], second["voice_cached"], inline["voice_cached"]) == (False, True, True)
    assert ClipServer.requests == 2 and second["audio_base64"] == first["audio_base64"]


# ---------------------------------------------------------------- presign, earlier field names

def test_presign_hands_out_outputs_only(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    made = worker.run(job("made", voice="alice"))
    signed = worker.run({"input": {"action": "presign", "key": made["audio_key"]}})
    assert (signed["key"], signed["bucket"], signed["expires_in_s"]) == ("outputs/made.wav", bucket_env["BUCKET_NAME"],
                                                                         86400)
    got = requests.get(signed["url"], timeout=10)
    assert got.status_code == 200 and got.content == s3.get_object(Bucket=bucket_env["BUCKET_NAME"],
                                                                   Key="outputs/made.wav")["Body"].read()
    for key, expected in [("voices/alice.wav", "input.key: must be an output's key, under 'outputs/' (OUTPUTS_PREFIX)"),
                          ("other/made.wav", "under 'outputs/'"), ("outputs/../voices/alice.wav", "no empty, '.'"),
                          ("/outputs/made.wav", "no leading '/'"), ("outputs//made.wav", "no empty"),
                          ("outputs/made.wav\n", "printable ASCII"),
                          ("outputs/missing.wav", "input.key: no object outputs/missing.wav in bucket")]:
        assert expected in worker.run({"input": {"action": "presign", "key": key}})["error"], key
    assert "needs a bucket" in make_worker({}).run({"input": {"action": "presign", "key": "outputs/x.wav"}})["error"]


def test_presign_refuses_voices_when_outputs_share_their_prefix(make_worker, bucket_env):
    worker = make_worker({**bucket_env, "OUTPUTS_PREFIX": ""})
    assert "must be an output's key" in worker.run({"input": {"action": "presign", "key": "voices/alice.wav"}})["error"]


@pytest.mark.parametrize(("raw", "field", "here"), [
    ({"text": "Hi.", "local_voice": "Kurt_12s.wav"}, "local_voice", "voice (a voice name, or its file name"),
    ({"endpoint": "list_voices"}, "endpoint", "action (upload -> upload_voice"),
    ({"text": "Hi.", "timing_format": "srt"}, "timing_format", "subtitles (srt, vtt, ass, json or csv"),
])
def test_the_earlier_projects_fields_point_to_ours(raw, field, here):
    with pytest.raises(InputError) as caught:
        parse_job(raw)
    assert f"{field} is the earlier F5-TTS RunPod worker's field, here: {here}" in str(caught.value)
    assert str(caught.value).endswith("(README: Coming from the earlier project)")


@pytest.mark.process
def test_a_long_voice_through_the_local_api_and_a_restarted_worker(start_worker, bucket_env, s3, long_voice):
    """``runpod_handler.py --rp_serve_api``: refused with recognition off; with it on, transcribed
    once, and a worker started afterwards reads the stored transcript without loading Whisper."""
    request = {"input": {"text": "Through the local API.", "voice": "long", **FAST}}
    off = start_worker(bucket_env)
    refused = off.post("/runsync", request)
    off.stop()
    assert refused["status"] == "FAILED" and "is 29.9 s long and F5-TTS uses at most 12 s" in refused["error"]
    first = start_worker({**bucket_env, "ASR_ENABLED": "1"}).post("/runsync", request)
    assert first["status"] == "COMPLETED", first
    assert {"transcribe_reference", "store_transcript"} <= set(first["output"]["timings_ms"])
    restarted = start_worker({**bucket_env, "ASR_ENABLED": "1"}).post("/runsync", request)
    assert restarted["status"] == "COMPLETED", restarted
    assert not {"transcribe_reference", "load_asr"} & set(restarted["output"]["timings_ms"])
