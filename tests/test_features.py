"""Long text with progress, streaming, several texts, OpenAI input and voice management, run
in-process through ``Worker.run`` on the tiny model and moto S3."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from tests.support.audio_bytes import decode, encode_as, reference_wav_bytes
from tests.support.bucket import ALICE_TEXT

FAST = {"nfe_step": 4, "seed": 7}
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5)  # 3 chunks


def job(job_id: str = "job-1", **fields) -> dict:
    return {"id": job_id, "input": {"text": "Hello there, this is a test.", **FAST, **fields}}


def b64(result: dict) -> bytes:
    return base64.b64decode(result["audio_base64"])


def reassemble(items: list[dict]) -> bytes:
    assert [item["chunk"] for item in items] == list(range(len(items)))
    return b"".join(base64.b64decode(item["audio_base64"]) for item in items)


# ---------------------------------------------------------------- long text, progress

def test_long_text_reports_progress_per_chunk(make_worker):
    messages: list[str] = []
    result = make_worker({}).run(job(text=LONG_TEXT), progress=messages.append)
    assert "error" not in result, result
    assert messages == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]
    assert result["duration_s"] > 20  # three chunks of ~10 s, cross-faded


def test_long_text_is_reproducible_with_a_seed(make_worker):
    worker = make_worker({})
    assert b64(worker.run(job("a", text=LONG_TEXT))) == b64(worker.run(job("b", text=LONG_TEXT)))


def test_text_over_the_limit_is_a_clear_error(make_worker):
    from f5worker import contract

    error = make_worker({}).run(job(text="x" * (contract.MAX_TEXT_CHARS + 1)))["error"]
    limit = contract.MAX_TEXT_CHARS
    assert error == f"input.text: is {limit + 1} characters, over the limit of {limit}"


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_streamed_chunks_reassemble_into_the_non_streamed_file(make_worker, fmt):
    worker = make_worker({})
    items: list[dict] = []
    final = worker.run(job("s", text=LONG_TEXT, stream=True, output_format=fmt), emit=items.append)
    whole = worker.run(job("w", text=LONG_TEXT, output_format=fmt))
    assert "error" not in final and "audio_base64" not in final, final
    assert final["chunks"] == len(items) >= 3 and final["duration_s"] == whole["duration_s"]
    assert 0 < final["timings_ms"]["first_audio"] < final["timings_ms"]["total"]
    assert all(item["format"] == fmt and item["sample_rate"] == 24_000 for item in items)
    streamed = reassemble(items)
    if fmt == "wav":
        wave, sr = decode(streamed)  # the concatenation is a playable WAV file
        assert sr == 24_000 and len(wave) / sr == pytest.approx(final["duration_s"], abs=1e-3)
        assert streamed[44:] == b64(whole)[44:]  # same samples as the classic job, bit for bit
        np.testing.assert_array_equal(wave, decode(b64(whole))[0])
    else:
        assert streamed == b64(whole)


def test_stream_items_are_split_below_the_stream_chunk_limit(make_worker, monkeypatch):
    from f5worker import delivery

    assert 4 * delivery.STREAM_PIECE_SAMPLES * 2 / 3 < 1_000_000
    monkeypatch.setattr(delivery, "STREAM_PIECE_SAMPLES", 24_000)  # 1 s pieces
    items: list[dict] = []
    final = make_worker({}).run(job(text=LONG_TEXT, stream=True, output_format="pcm"), emit=items.append)
    pieces = [base64.b64decode(item["audio_base64"]) for item in items]
    assert len(items) == final["chunks"] > 20
    assert max(map(len, pieces)) == 48_000
    assert sum(map(len, pieces)) == round(final["duration_s"] * 24_000) * 2


def test_stream_on_the_classic_handler_says_how_to_enable_it(make_worker):
    assert "STREAMING=1" in make_worker({}).run(job(stream=True))["error"]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"output_format": "mp3"}, "input.output_format: a streamed job sends wav or pcm"),
    ({"remove_silence": True}, "input.remove_silence"),
    ({"texts": ["a", "b"], "text": None}, "input.stream"),
    ({"stream": "yes"}, "input.stream: must be true or false"),
])
def test_stream_input_errors(make_worker, fields, expected):
    fields = {"stream": True, **fields}
    raw = {k: v for k, v in {**job()["input"], **fields}.items() if v is not None}
    assert expected in make_worker({}).run({"id": "x", "input": raw}, emit=lambda item: None)["error"]


# ---------------------------------------------------------------- several texts

def test_texts_give_one_output_each_in_order(make_worker, bucket_env, s3):
    texts = ["A short one.", "This second text is noticeably longer than the first one.", "Middle length here."]
    worker = make_worker(bucket_env)
    result = worker.run({"id": "multi", "input": {"texts": texts, "voice": "alice", **FAST}})
    assert "error" not in result, result
    assert [o["index"] for o in result["outputs"]] == [0, 1, 2]
    assert [o["audio_key"] for o in result["outputs"]] == [f"outputs/multi-{i}.wav" for i in range(3)]
    assert result["timings_ms"]["prepare_reference"] > 0 and result["voice_cached"] is False
    for i, (text, output) in enumerate(zip(texts, result["outputs"], strict=True)):
        data = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=output["audio_key"])["Body"].read()
        single = worker.run(job(f"single-{i}", text=text, voice="alice", return_base64=True))
        assert data == b64(single)  # same seed, same maths: each output is that text's own job
        assert output["duration_s"] == single["duration_s"]


def test_texts_inline_without_bucket(make_worker):
    result = make_worker({}).run({"id": "m", "input": {"texts": ["One.", "Two two."], **FAST, "output_format": "flac"}})
    assert [decode(base64.b64decode(o["audio_base64"]))[1] for o in result["outputs"]] == [24_000, 24_000]


@pytest.mark.parametrize(("texts", "expected"), [
    ([], "input.texts: must be a non-empty list of strings"),
    ("one text", "input.texts: must be a non-empty list of strings"),
    (["ok"] * 17, "input.texts: has 17 entries, over the limit of 16"),
    (["ok", ""], "input.texts[1]: is empty"),
    (["ok", 3], "input.texts[1]: must be a string"),
    (["x" * 3000, "y" * 3000], "input.texts: are 6000 characters together, over the limit of 5000"),
])
def test_texts_input_errors(make_worker, texts, expected):
    assert make_worker({}).run({"id": "x", "input": {"texts": texts}})["error"].startswith(expected)


def test_text_and_texts_together_is_an_error(make_worker):
    assert "not both" in make_worker({}).run({"id": "x", "input": {"text": "a", "texts": ["b"]}})["error"]


# ---------------------------------------------------------------- OpenAI input

def openai(**fields) -> dict:
    speech = {"model": "f5-tts", "input": "Hello from an OpenAI client.", "seed": 3, "nfe_step": 4}
    return {"id": "oa", "input": {**speech, **fields}}


def test_openai_shape_defaults_to_mp3_like_openai(make_worker):
    result = make_worker({}).run(openai(voice="default"))
    assert result["format"] == "mp3" and decode(b64(result))[1] == 24_000


@pytest.mark.parametrize(("response_format", "native"), [("opus", "ogg"), ("flac", "flac"), ("wav", "wav")])
def test_openai_formats_map_to_native(make_worker, response_format, native):
    worker = make_worker({})
    result = worker.run(openai(response_format=response_format, speed=1.25))
    assert result["format"] == native
    native_result = worker.run({"id": "n", "input": {"text": "Hello from an OpenAI client.", "seed": 3, "nfe_step": 4,
                                                     "output_format": native, "speed": 1.25}})
    assert result["duration_s"] == native_result["duration_s"]


def test_openai_voice_object_empty_instructions_and_audio_stream_format_are_accepted(make_worker):
    worker = make_worker({})
    result = worker.run(openai(voice={"id": "default"}, instructions="", stream_format="audio"))
    assert result["voice"] == "default" and result["format"] == "mp3"


def test_openai_pcm_is_raw_16_bit_little_endian_24k(make_worker):
    worker = make_worker({})
    pcm = b64(worker.run(openai(response_format="pcm")))
    wav = b64(worker.run(openai(response_format="wav")))
    assert wav[44:] == pcm and len(pcm) % 2 == 0
    assert sf.info(io.BytesIO(wav)).samplerate == 24_000


@pytest.mark.parametrize(("fields", "expected"), [
    ({"response_format": "aac"}, "input.response_format: aac cannot be produced here (libsndfile has no AAC encoder)"),
    ({"response_format": "ogg"}, "input.response_format: must be one of mp3, opus, flac, wav, pcm"),
    ({"text": "both"}, "input.input: is OpenAI's name for text"),
    ({"output_format": "wav", "response_format": "mp3"}, "input.response_format: is OpenAI's name for output_format"),
    ({"model": 5}, "input.model: must be a string"),
    ({"input": ""}, "input.input: is empty"),
    ({"speed": 5.0}, "input.speed: must be between 0.25 and 4"),
    ({"instructions": "cheerful"}, "input.instructions: cannot be honoured: F5-TTS speaks in the manner of the "
                                   "reference voice and takes no instructions"),
    ({"instructions": 5}, "input.instructions: must be a string, not int"),
    ({"stream_format": "sse"}, "input.stream_format: sse is served by the HTTP mode (WORKER_MODE=http)"),
    ({"stream_format": "chunks"}, "input.stream_format: must be one of audio, sse"),
    ({"voice": {"name": "alice"}}, 'input.voice: must be a voice name or {"id": <voice name>}'),
    ({"voice": {"id": "../x"}}, "input.voice: must be a voice name (1-64 letters, digits"),
])
def test_openai_input_errors(make_worker, fields, expected):
    assert expected in make_worker({}).run(openai(**fields))["error"]


# ---------------------------------------------------------------- voice management

def action(kind: str, **fields) -> dict:
    return {"id": f"act-{kind}", "input": {"action": kind, **fields}}


def long_mp3() -> bytes:
    """20 s of speech (the reference clip four times) as mp3."""
    wave, sr = decode(reference_wav_bytes())
    out = io.BytesIO()
    sf.write(out, np.tile(wave, 4), sr, format="MP3", subtype="MPEG_LAYER_III")
    return out.getvalue()


def test_list_voices(make_worker, bucket_env):
    voices = make_worker(bucket_env).run(action("list_voices"))["voices"]
    assert [v["name"] for v in voices] == ["default", "alice", "bob", "carol", "mute"]
    by_name = {v["name"]: v for v in voices}
    assert by_name["default"]["builtin"] is True and by_name["default"]["transcript"]
    assert by_name["alice"]["transcript"] == ALICE_TEXT and by_name["alice"]["format"] == "wav"
    assert by_name["bob"]["format"] == "flac"
    assert by_name["bob"]["size"] == len(encode_as(reference_wav_bytes(), "FLAC", "PCM_16"))
    assert by_name["mute"]["transcript"] is None
    assert by_name["carol"]["last_modified"].startswith("20")


def test_list_voices_without_bucket_has_the_builtin_one(make_worker):
    assert [v["name"] for v in make_worker({}).run(action("list_voices"))["voices"]] == ["default"]


def test_upload_base64_converts_clips_stores_and_is_usable(make_worker, bucket_env, s3, scratch):
    worker = make_worker(bucket_env)
    result = worker.run(action("upload_voice", name="dave", transcript="  Hello, I am Dave.  ",
                               audio_base64=base64.b64encode(long_mp3()).decode()))
    assert "error" not in result, result
    assert (result["audio_key"], result["transcript_key"]) == ("voices/dave.wav", "voices/dave.txt")
    assert result["clipped"] is True and result["source_duration_s"] > 19 and result["duration_s"] <= 12.0
    bucket = bucket_env["BUCKET_NAME"]
    data = s3.get_object(Bucket=bucket, Key="voices/dave.wav")["Body"].read()
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.format) == (24_000, 1, "WAV")
    assert info.duration == pytest.approx(result["duration_s"], abs=1e-3)
    assert s3.get_object(Bucket=bucket, Key="voices/dave.txt")["Body"].read() == b"Hello, I am Dave."
    assert "error" not in worker.run(job(voice="dave"))
    assert list(scratch.iterdir()) == []


def test_upload_refuses_to_replace_unless_overwrite(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    upload = action("upload_voice", name="bob", transcript=ALICE_TEXT,
                    audio_base64=base64.b64encode(reference_wav_bytes()).decode())
    assert "pass overwrite: true" in worker.run(upload)["error"]
    upload["input"]["overwrite"] = True
    assert "error" not in worker.run(upload)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/bob.")["Contents"]]
    assert sorted(keys) == ["voices/bob.txt", "voices/bob.wav"]  # the old flac is gone


def test_delete_voice(make_worker, bucket_env, s3):
    worker = make_worker(bucket_env)
    assert worker.run(job("before", voice="alice"))["voice_cached"] is False
    result = worker.run(action("delete_voice", name="alice"))
    assert result["deleted"] == ["voices/alice.txt", "voices/alice.wav"]
    assert s3.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="voices/alice.").get("KeyCount") == 0
    assert "not found" in worker.run(job("after", voice="alice"))["error"]
    assert "not found" in worker.run(action("delete_voice", name="alice"))["error"]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"name": "../x"}, "input.name: must be 1-64 letters"),
    ({"name": "default"}, "input.name: 'default' is the built-in voice"),
    ({"audio_url": "https://x.example/a.wav"}, "input.audio_base64: give the audio as audio_base64 or as audio_url"),
    ({"audio_base64": None}, "input.audio_base64: give the audio"),
    ({"audio_base64": "not base64!"}, "input.audio_base64: is not valid base64"),
    ({"audio_base64": base64.b64encode(b"junk" * 100).decode()}, "reference audio: not decodable audio"),
    ({"transcript": ""}, "input.transcript: is empty"),
    ({"audio_base64": None, "audio_url": "http://example.com/a.wav"}, "input.audio_url: must be an https:// URL"),
    ({"audio_base64": None, "audio_url": "https://127.0.0.1/a.wav"},
     "audio_url: host '127.0.0.1' resolves to non-public address 127.0.0.1"),
    ({"audio_base64": None, "audio_url": "https://localhost:9/a.wav"}, "resolves to non-public address"),
    ({"audio_base64": None, "audio_url": "https://169.254.169.254/a.wav"},
     "resolves to non-public address 169.254.169.254"),
    ({"extra": 1}, "input.extra: unknown field"),
])
@pytest.mark.process  # a URL case imports the runpod SDK (rp_ssrf), whose py-cpuinfo starts a subprocess
def test_upload_errors(make_worker, bucket_env, fields, expected):
    clip = base64.b64encode(reference_wav_bytes()).decode()
    raw = {"name": "eve", "transcript": "Hi.", "audio_base64": clip, **fields}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert expected in make_worker(bucket_env).run(action("upload_voice", **raw))["error"]


def test_upload_size_cap_on_base64(make_worker, bucket_env, monkeypatch):
    from f5worker import contract

    monkeypatch.setattr(contract, "MAX_UPLOAD_BYTES", 3000)
    raw = {"name": "eve", "transcript": "Hi.", "audio_base64": base64.b64encode(reference_wav_bytes()).decode()}
    assert "over the limit of 4000" in make_worker(bucket_env).run(action("upload_voice", **raw))["error"]


@pytest.mark.parametrize("name", ["upload_voice", "delete_voice"])
def test_voice_management_needs_a_bucket(make_worker, name):
    raw = {"name": "eve", "transcript": "Hi.", "audio_base64": base64.b64encode(reference_wav_bytes()).decode()}
    if name == "delete_voice":
        raw = {"name": "eve"}
    assert "needs a bucket" in make_worker({}).run(action(name, **raw))["error"]


def test_unknown_action(make_worker):
    assert "input.action: must be one of synthesize, list_voices" in make_worker({}).run(action("rename"))["error"]
