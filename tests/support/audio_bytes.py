"""Audio as bytes: the reference clip shipped with f5-tts, re-encoded or decoded with libsndfile."""

from __future__ import annotations

import io
from importlib.resources import files

import numpy as np
import soundfile as sf


def reference_wav_bytes() -> bytes:
    return files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav").read_bytes()


def encode_as(data: bytes, fmt: str, subtype: str) -> bytes:
    wave, sr = sf.read(io.BytesIO(data), dtype="float32")
    out = io.BytesIO()
    sf.write(out, wave, sr, format=fmt, subtype=subtype)
    return out.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data), dtype="float32")


def long_clip(repeats: int = 5, gap_s: float = 0.8) -> bytes:
    """A WAV of the packaged clip ``repeats`` times with ``gap_s`` of silence between: ~30 s of
    speech with pauses, as the long voices the earlier project's users keep."""
    wave, sr = decode(reference_wav_bytes())
    gap = np.zeros(int(gap_s * sr), np.float32)
    out = io.BytesIO()
    sf.write(out, np.concatenate([part for _ in range(repeats) for part in (wave, gap)][:-1]), sr, format="WAV")
    return out.getvalue()
