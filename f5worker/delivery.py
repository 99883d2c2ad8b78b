"""Where a synthesis job's outputs go: the bucket (``<OUTPUTS_PREFIX><job id>.<ext>``, with a
presigned URL), inline in the result (base64 audio, subtitle text), or, for a stream job, item by
item while it is made.

:meth:`Outbox.for_job` is the one place that decides inline or bucket. Outputs are typed here and
become the result's JSON only in :meth:`TextOutput.to_json`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from botocore.client import BaseClient

from f5worker import audio, s3
from f5worker.asr import Word
from f5worker.contract import SynthesisRequest
from f5worker.formats import OUTPUT_FORMATS, SAMPLE_RATE, SUBTITLE_FORMATS, base64_length
from f5worker.storage import BucketSettings, safe_job_id
from f5worker.timings import Timings

# RunPod caps a job's result at 20 MB; inline audio stays well below so /run and /runsync both carry it.
MAX_INLINE_BASE64_BYTES = 10 * 1024 * 1024
# A streamed item holds at most 8 s of 16-bit PCM: 384 KB, 512 KB as base64, well under RunPod's
# 1 MB limit on one stream chunk.
STREAM_PIECE_SAMPLES = 8 * SAMPLE_RATE

Emit = Callable[[dict[str, Any]], None]  # gets each streamed item


class AudioSink(Protocol):
    """Where a synthesis sends its audio part by part as it is made, instead of into an output file:
    a stream job's items (:class:`AudioStream`), or the HTTP server's response."""

    count: int  # parts sent so far

    def send(self, wave: np.ndarray) -> None: ...


class JobCancelled(Exception):
    """Raised by a sink whose client went away: the job stops, and its chunks not yet started are dropped."""


@dataclass(frozen=True)
class Inline:
    """A file carried in the result itself: base64 audio, or subtitle text."""

    data: str


@dataclass(frozen=True)
class Uploaded:
    """A file put in the bucket."""

    bucket: str
    key: str
    url: str  # presigned GET


Delivered = Inline | Uploaded


@dataclass(frozen=True)
class TextOutput:
    """One text's output: its audio and, when the job asked for them, word timings and subtitles."""

    duration_s: float
    audio: Delivered
    words: list[Word] | None = None
    subtitles: Delivered | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"duration_s": self.duration_s}
        if isinstance(self.audio, Inline):
            out["audio_base64"] = self.audio.data
        else:
            out.update(audio_key=self.audio.key, audio_url=self.audio.url, bucket=self.audio.bucket)
        if self.words is not None:
            out["words"] = [asdict(w) for w in self.words]
        if isinstance(self.subtitles, Inline):
            out["subtitles"] = self.subtitles.data
        elif isinstance(self.subtitles, Uploaded):
            out.update(subtitles_key=self.subtitles.key, subtitles_url=self.subtitles.url)
        return out


@dataclass(frozen=True)
class Outbox:
    """Where one job's files go: ``client`` None means inline in the result."""

    client: BaseClient | None
    bucket: BucketSettings
    job_id: str
    several: bool  # the job gave ``texts``: keys are suffixed ``-<i>``
    timings: Timings
    presign_expires_s: int

    @classmethod
    def for_job(cls, client: BaseClient | None, bucket: BucketSettings, job_id: str, request: SynthesisRequest,
                timings: Timings, presign_expires_s: int) -> Outbox:
        """Inline when the worker has no bucket or the job asked for ``return_base64``."""
        return cls(None if request.return_base64 else client, bucket, job_id, request.several, timings,
                   presign_expires_s)

    def stem(self, index: int) -> str:
        """The key stem of output ``index``: the job id, suffixed ``-<i>`` for ``texts``."""
        return f"{safe_job_id(self.job_id)}-{index}" if self.several else safe_job_id(self.job_id)

    def audio(self, paths: list[Path], fmt: str) -> list[Delivered]:
        """Every text's encoded audio file; inline ones together within ``MAX_INLINE_BASE64_BYTES``."""
        if self.client is None:
            size = sum(base64_length(path.stat().st_size) for path in paths)
            if size > MAX_INLINE_BASE64_BYTES:
                raise audio.AudioError(
                    f"the {fmt} output would be {size} bytes of base64, over the "
                    f"{MAX_INLINE_BASE64_BYTES}-byte inline limit: configure a bucket or pick mp3/ogg"
                )
            return [Inline(base64.b64encode(path.read_bytes()).decode("ascii")) for path in paths]
        content_type = OUTPUT_FORMATS[fmt].content_type
        delivered: list[Delivered] = []
        for i, path in enumerate(paths):
            key = self._key(i, fmt)
            with self.timings.measure("upload"):
                s3.upload_file(self.client, self.bucket.name, key, path, content_type)
                delivered.append(self._uploaded(key))
        return delivered

    def subtitles(self, index: int, text: str, fmt: str) -> Delivered:
        if self.client is None:
            return Inline(text)
        key = self._key(index, fmt)
        with self.timings.measure("upload"):
            s3.put_text(self.client, self.bucket.name, key, text, SUBTITLE_FORMATS[fmt])
            return self._uploaded(key)

    def _key(self, index: int, ext: str) -> str:
        return f"{self.bucket.outputs_prefix}{self.stem(index)}.{ext}"

    def _uploaded(self, key: str) -> Uploaded:
        url = s3.presigned_url(self.client, self.bucket.name, key, self.presign_expires_s)
        return Uploaded(self.bucket.name, key, url)


class AudioStream:
    """A stream job's audio as items of at most ``STREAM_PIECE_SAMPLES`` samples, each
    ``{"chunk": k, "format", "sample_rate", "audio_base64"}`` with base64 of 16-bit little-endian
    PCM, the first one preceded by a streaming WAV header when the format is ``wav``. Decoded and
    concatenated in ``chunk`` order, they are the job's audio file."""

    def __init__(self, fmt: str, emit: Emit, timings: Timings):
        self.fmt = fmt
        self.emit = emit
        self.timings = timings
        self.count = 0
        self.encoder = audio.StreamEncoder(fmt, SAMPLE_RATE)

    def send(self, wave: np.ndarray) -> None:
        for start in range(0, len(wave), STREAM_PIECE_SAMPLES):
            data = self.encoder.encode(wave[start : start + STREAM_PIECE_SAMPLES])
            self.timings.mark("first_audio")
            self.emit({"chunk": self.count, "format": self.fmt, "sample_rate": SAMPLE_RATE,
                       "audio_base64": base64.b64encode(data).decode("ascii")})
            self.count += 1
