"""Audio helpers: formats, silence handling and reference preparation."""

from __future__ import annotations

import io

import numpy as np
import pytest

from f5worker import audio
from f5worker.voices import REF_MAX_S, VoiceError, normalise_ref_text, prepare_reference

SR = 24_000


def tone(seconds: float, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * sr), dtype=np.float32)


@pytest.mark.parametrize("fmt", sorted(set(audio.OUTPUT_FORMATS) - {"pcm"}))
def test_write_and_read_back(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    audio.write(tone(1.0), SR, fmt, path)
    wave, sr = audio.read_mono(path)
    assert sr == SR and len(wave) == pytest.approx(SR, rel=0.1)


def test_pcm_is_the_wav_payload_and_a_streaming_header_makes_it_a_wav(tmp_path):
    wave = tone(1.0)
    pcm, wav = io.BytesIO(), io.BytesIO()
    audio.write(wave, SR, "pcm", pcm)
    audio.write(wave, SR, "wav", wav)
    assert len(pcm.getvalue()) == 2 * len(wave)
    assert wav.getvalue().endswith(pcm.getvalue())
    np.testing.assert_array_equal(np.frombuffer(pcm.getvalue(), "<i2"), np.frombuffer(wav.getvalue()[44:], "<i2"))
    path = tmp_path / "streamed.wav"
    path.write_bytes(audio.streaming_wav_header(SR) + pcm.getvalue())
    decoded, sr = audio.read_mono(path)
    assert sr == SR and len(decoded) == len(wave)
    np.testing.assert_allclose(decoded, wave, atol=1 / 32767)


def test_unreadable_and_empty_audio(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(audio.AudioError, match="not decodable"):
        audio.read_mono(junk)
    empty = tmp_path / "empty.wav"
    audio.write(silence(0), SR, "wav", empty)
    with pytest.raises(audio.AudioError, match="empty"):
        audio.read_mono(empty)


def test_trim_silence_edges():
    trimmed = audio.trim_silence_edges(np.concatenate([silence(1), tone(2), silence(1.5)]), SR)
    assert len(trimmed) / SR == pytest.approx(2, abs=0.02)


def test_shorten_silences_keeps_short_pauses_and_caps_long_ones():
    wave = np.concatenate([silence(2), tone(1), silence(0.5), tone(1), silence(3), tone(1), silence(2)])
    out = audio.shorten_silences(wave, SR)
    # 2 s lead -> 0.5, 0.5 s pause kept, 3 s gap -> 1.0, 2 s tail -> 0.5
    assert len(out) / SR == pytest.approx(0.5 + 1 + 0.5 + 1 + 1.0 + 1 + 0.5, abs=0.05)


def test_prepare_reference_resamples_clips_and_pads(tmp_path):
    path = tmp_path / "ref.flac"
    audio.write(np.concatenate([silence(0.5, 16_000), tone(20, 16_000)]), 16_000, "flac", path)
    ref = prepare_reference(path, "hello world")
    assert ref.audio.shape[0] == 1 and ref.audio.dtype.is_floating_point
    assert ref.duration_s <= REF_MAX_S + 0.06
    assert ref.text == "hello world. "


def test_silent_reference_is_refused(tmp_path):
    path = tmp_path / "quiet.wav"
    audio.write(silence(3), SR, "wav", path)
    with pytest.raises(VoiceError, match="less than"):
        prepare_reference(path, "text")


@pytest.mark.parametrize(("raw", "expected"),
                         [("Hi", "Hi. "), ("Hi.", "Hi. "), ("  Hi. ", "Hi. "), ("你好。", "你好。")])
def test_ref_text_normalisation(raw, expected):
    assert normalise_ref_text(raw) == expected
