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


def encode_in_parts(fmt: str, parts: list[np.ndarray]) -> list[bytes]:
    """What a StreamEncoder returns for each part, then for finish()."""
    encoder = audio.StreamEncoder(fmt, SR)
    return [encoder.encode(part) for part in parts] + [encoder.finish()]


def decode_bytes(data: bytes, fmt: str, tmp_path) -> np.ndarray:
    path = tmp_path / f"decoded.{fmt}"
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768
    path.write_bytes(data)
    return audio.read_mono(path)[0]


PARTS = [tone(1.0), tone(0.5, amp=0.2), tone(1.5, amp=0.1)]  # 3 s in all


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "ogg"])
def test_a_stream_encoder_sends_bytes_with_every_part_and_they_decode_as_they_come(tmp_path, fmt):
    pieces = encode_in_parts(fmt, PARTS)
    assert all(pieces[:-2])  # bytes leave with the first parts, not only at the end
    whole = decode_bytes(b"".join(pieces), fmt, tmp_path)
    assert len(whole) == pytest.approx(3 * SR, abs=0.1 * SR)  # mp3 adds the encoder's delay, ~70 ms
    first_two = decode_bytes(b"".join(pieces[:2]), fmt, tmp_path)  # what a client holds mid-stream
    assert len(first_two) > SR / 2


def test_streamed_pcm_and_wav_are_exactly_the_whole_files(tmp_path):
    whole = np.concatenate(PARTS)
    for fmt in ("pcm", "wav"):
        expected = io.BytesIO()
        audio.write(whole, SR, fmt, expected)
        streamed = b"".join(encode_in_parts(fmt, PARTS))
        if fmt == "wav":
            assert streamed[:44] == audio.streaming_wav_header(SR) and streamed[44:] == expected.getvalue()[44:]
        else:
            assert streamed == expected.getvalue()
    assert b"".join(encode_in_parts("wav", [])) == audio.streaming_wav_header(SR)


def test_the_streamed_mp3_is_constant_bitrate_without_the_tag_written_over_its_first_frame(tmp_path):
    data = b"".join(encode_in_parts("mp3", PARTS))
    assert b"Xing" not in data and b"Info" not in data[:2000]  # a stream cannot go back to write it
    bitrates, at = set(), 0
    while at + 4 <= len(data):  # MPEG-2 layer III frame headers: 12 sync bits, then the bitrate index
        header = int.from_bytes(data[at : at + 4], "big")
        assert header >> 21 == 0x7FF, f"no frame header at byte {at}"
        kbps = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)[(header >> 12) & 15]
        bitrates.add(kbps)
        at += 72 * kbps * 1000 // SR + ((header >> 9) & 1)
    assert bitrates == {80} and at == len(data)


def test_a_format_that_cannot_stream_comes_whole_from_finish(tmp_path):
    pieces = encode_in_parts("flac", PARTS)
    assert pieces[:-1] == [b"", b"", b""]
    decoded = decode_bytes(pieces[-1], "flac", tmp_path)
    np.testing.assert_allclose(decoded, np.concatenate(PARTS), atol=2 / 32767)


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
