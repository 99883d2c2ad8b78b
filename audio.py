"""Audio in and out with libsndfile (via soundfile): no ffmpeg anywhere in the worker.

libsndfile >= 1.1 reads and writes WAV, FLAC, MP3 and Ogg/Opus itself, which keeps the image
free of ffmpeg and the torchcodec/pydub paths that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

FRAME_MS = 10


@dataclass(frozen=True)
class OutputFormat:
    container: str
    subtype: str
    content_type: str


OUTPUT_FORMATS = {
    "wav": OutputFormat("WAV", "PCM_16", "audio/wav"),
    "flac": OutputFormat("FLAC", "PCM_16", "audio/flac"),
    "mp3": OutputFormat("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "ogg": OutputFormat("OGG", "OPUS", "audio/ogg"),
}
VOICE_EXTENSIONS = ("wav", "flac", "mp3", "ogg")


class AudioError(ValueError):
    """Audio that cannot be used; the message is safe to show to the client."""


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format to mono float32."""
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"not decodable audio ({err.__class__.__name__})") from err
    if wave.size == 0:
        raise AudioError("audio is empty")
    return wave.mean(axis=1), sr


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return wave
    return AF.resample(torch.from_numpy(wave), sr, target_sr).numpy()


def _frame_step(sr: int) -> int:
    return max(1, sr * FRAME_MS // 1000)


def _frame_db(wave: np.ndarray, sr: int) -> np.ndarray:
    """Level of each 10 ms frame in dBFS (pydub's ``detect_leading_silence`` resolution)."""
    step = _frame_step(sr)
    frames = wave[: len(wave) // step * step].reshape(-1, step)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def silent_runs(wave: np.ndarray, sr: int, threshold_db: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of consecutive frames quieter than ``threshold_db``."""
    step = _frame_step(sr)
    quiet = np.concatenate([[False], _frame_db(wave, sr) < threshold_db, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return [(int(a) * step, min(int(b) * step, len(wave))) for a, b in zip(edges[::2], edges[1::2])]


def trim_silence_edges(wave: np.ndarray, sr: int, threshold_db: float = -42.0) -> np.ndarray:
    """Drop leading and trailing silence, as upstream's ``remove_silence_edges``."""
    loud = np.flatnonzero(_frame_db(wave, sr) >= threshold_db)
    if loud.size == 0:
        return wave[:0]
    step = _frame_step(sr)
    return wave[loud[0] * step : (loud[-1] + 1) * step]


def shorten_silences(wave: np.ndarray, sr: int, min_silence_ms: int = 1000, threshold_db: float = -50.0,
                     keep_ms: int = 500) -> np.ndarray:
    """Cut every silence of at least ``min_silence_ms`` down to ``keep_ms`` on each side of the
    speech around it, the effect of upstream's ``remove_silence_for_generated_wav``."""
    keep = sr * keep_ms // 1000
    pieces, cursor = [], 0
    for a, b in silent_runs(wave, sr, threshold_db):
        if (b - a) * 1000 < min_silence_ms * sr:
            continue
        head = 0 if a == 0 else keep
        tail = 0 if b >= len(wave) else keep
        pieces.append(wave[cursor : a + head])
        cursor = max(a + head, b - tail)
    pieces.append(wave[cursor:])
    return np.concatenate(pieces)


def write(wave: np.ndarray, sr: int, fmt: str, path: Path | BinaryIO) -> None:
    """Encode ``wave`` as ``fmt`` into a file or a binary stream (e.g. ``io.BytesIO``)."""
    spec = OUTPUT_FORMATS[fmt]
    target = str(path) if isinstance(path, Path) else path
    sf.write(target, np.clip(wave, -1.0, 1.0), sr, format=spec.container, subtype=spec.subtype)
