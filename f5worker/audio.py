"""Audio in and out with libsndfile (via soundfile): no ffmpeg anywhere in the worker.

libsndfile >= 1.1 reads and writes WAV, FLAC, MP3 and Ogg/Opus itself, which keeps the image
free of ffmpeg and the torchcodec/pydub paths that need it.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from f5worker.formats import OUTPUT_FORMATS

FRAME_MS = 10
# Where a reference too long for the model is cut: at the last pause of at least 1 s (quieter than
# -50 dBFS) inside the part kept, else at the last of at least 100 ms (quieter than -40 dBFS), as
# upstream's preprocess_ref_audio_text looks for them; a pause before CUT_MIN_S does not count.
PAUSES = ((-50.0, 1000), (-40.0, 100))
CUT_MIN_S = 3.0
# A streamed MP3 is constant-bitrate: it cannot carry the Xing/LAME tag (libsndfile writes it at the end,
# over the first frame, which a stream has already sent), and without one a decoder estimates the
# length from the size and the first frame's bitrate, right only at a constant bitrate. 0.5 is 80 kbit/s.
MP3_STREAM_OPTIONS = {"bitrate_mode": "CONSTANT", "compression_level": 0.5}


class AudioError(ValueError):
    """Audio that cannot be used; the message is safe to show to the client."""


def read_mono(path: Path, max_seconds: float = float("inf")) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format to mono float32. The duration in the header is checked
    first, so a file over ``max_seconds`` is refused before it is decoded into memory."""
    try:
        duration = sf.info(str(path)).duration
        if duration <= max_seconds:
            wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"not decodable audio ({err.__class__.__name__})") from err
    if duration > max_seconds:
        raise AudioError(f"audio is {duration:.1f} s long, over the {max_seconds:g} s limit")
    if wave.size == 0:
        raise AudioError("audio is empty")
    return wave.mean(axis=1), sr


def header_duration(source: Path | BinaryIO) -> float:
    """The duration in seconds that the file's header gives (libsndfile reads only what it needs:
    a WAV or FLAC header, an MP3's first frames, an Ogg stream's first and last pages)."""
    try:
        return sf.info(source).duration
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"not decodable audio ({err.__class__.__name__})") from err


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
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))  # padded with False: rises and falls pair up
    return [(int(a) * step, min(int(b) * step, len(wave))) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def cut_at_pause(wave: np.ndarray, sr: int, max_samples: int) -> int:
    """How many samples of ``wave`` to keep so that at most ``max_samples`` remain, cut where a
    pause starts rather than inside a word (see ``PAUSES``); ``max_samples`` when no pause fits."""
    if len(wave) <= max_samples:
        return len(wave)
    for threshold_db, min_ms in PAUSES:
        starts = [a for a, b in silent_runs(wave, sr, threshold_db)
                  if (b - a) * 1000 >= min_ms * sr and CUT_MIN_S * sr <= a <= max_samples]
        if starts:
            return starts[-1]
    return max_samples


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


def write(wave: np.ndarray, sr: int, fmt: str, target: Path | BinaryIO) -> None:
    """Encode in memory, then write: a full disk or a file-size limit then raises ``OSError``
    with its errno (ENOSPC, EFBIG), which libsndfile would blur into "System error"."""
    spec = OUTPUT_FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sr, format=spec.container, subtype=spec.subtype, endian=spec.endian)
    if isinstance(target, Path):
        target.write_bytes(buffer.getbuffer())
    else:
        target.write(buffer.getbuffer())


def streaming_wav_header(sr: int) -> bytes:
    """A 16-bit mono WAV header for audio of unknown length (RIFF and data sizes 0xFFFFFFFF, the
    usual convention for streamed WAV): followed by `pcm` bytes it makes a file that libsndfile,
    browsers and ffmpeg read to its end."""
    unknown = 0xFFFFFFFF
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sr, sr * 2, 2, 16)
    return struct.pack("<4sI4s", b"RIFF", unknown, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", unknown)


class _AppendOnly(io.RawIOBase):
    """A file for libsndfile's encoder whose bytes leave as they are written: :meth:`take` returns
    those written since the last call. A later write over bytes already taken (the MP3 encoder's
    LAME tag, written over its first frame at close) is dropped: they are gone."""

    def __init__(self) -> None:
        super().__init__()
        self._taken = 0  # bytes returned by take()
        self._pending = bytearray()  # the bytes after them
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._taken + len(self._pending)}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        start = self._pos - self._taken
        kept = view[max(0, -start):]
        start = max(0, start)
        if start > len(self._pending):
            self._pending.extend(bytes(start - len(self._pending)))
        self._pending[start : start + len(kept)] = kept
        self._pos += len(view)
        return len(view)

    def take(self) -> bytes:
        out = bytes(self._pending)
        self._taken += len(out)
        self._pending.clear()
        return out


class StreamEncoder:
    """One file made piece by piece: :meth:`encode` each part of the wave in order, then
    :meth:`finish`; the bytes they return, concatenated, are the file in ``fmt``.

    ``pcm`` and ``wav`` (a streaming header first) come out at once, ``mp3`` (constant bitrate,
    ``MP3_STREAM_OPTIONS``) and ``ogg`` (Opus) as libsndfile's encoder emits them; any other format
    (``flac``) whole, from :meth:`finish` (``formats.INCREMENTAL_FORMATS`` lists the first four).
    """

    def __init__(self, fmt: str, sr: int):
        self.fmt = fmt
        self.sr = sr
        self._header = streaming_wav_header(sr) if fmt == "wav" else b""
        self._held: list[np.ndarray] = []  # the whole wave of a format that is not sent piece by piece
        self._sink: _AppendOnly | None = None
        self._file: sf.SoundFile | None = None
        if fmt in ("mp3", "ogg"):
            spec = OUTPUT_FORMATS[fmt]
            self._sink = _AppendOnly()
            self._file = sf.SoundFile(self._sink, "w", sr, 1, format=spec.container, subtype=spec.subtype,
                                      **(MP3_STREAM_OPTIONS if fmt == "mp3" else {}))

    def encode(self, wave: np.ndarray) -> bytes:
        if self._file is not None:
            self._file.write(np.clip(wave, -1.0, 1.0))
            return self._sink.take()
        if self.fmt not in ("pcm", "wav"):
            self._held.append(wave)
            return b""
        buffer = io.BytesIO(self._header)
        buffer.seek(0, io.SEEK_END)
        write(wave, self.sr, "pcm", buffer)
        self._header = b""
        return buffer.getvalue()

    def finish(self) -> bytes:
        if self._file is not None:
            self._file.close()
            return self._sink.take()
        if self.fmt in ("pcm", "wav"):
            header, self._header = self._header, b""
            return header  # the header of a wav with no audio
        buffer = io.BytesIO()
        write(np.concatenate(self._held) if self._held else np.zeros(0, np.float32), self.sr, self.fmt, buffer)
        self._held = []
        return buffer.getvalue()
