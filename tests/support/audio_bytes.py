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
