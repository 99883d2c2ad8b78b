"""Reference voices: the clip packaged with f5-tts, or ``<VOICES_PREFIX><name>.<ext>`` with its
``<name>.txt`` transcript in S3.

A prepared reference is cached in memory keyed by the S3 object's ETag and the transcript's, so
later jobs on the same voice neither download it again nor redo the preparation, and a replaced
voice (new ETag) is picked up on its next use.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from botocore.client import BaseClient

import audio
import s3_utils
from storage import BucketSettings
from timings import Timings
from tts_model import SAMPLE_RATE

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"
REF_MAX_S = 12.0  # F5-TTS is trained on references of at most ~12 s; upstream clips there too
REF_MIN_S = 0.5
REF_TAIL_S = 0.05  # upstream appends 50 ms of silence to the reference
# Limits on a voice in the bucket. Sizes are checked against the listing before any download (and
# the download is cut at the cap); the duration from the file's header, before decoding.
MAX_VOICE_BYTES = int(os.environ.get("VOICE_MAX_BYTES", str(50 * 1024 * 1024)))
MAX_VOICE_SECONDS = float(os.environ.get("VOICE_MAX_SECONDS", "300"))  # only the first 12 s are used
MAX_TRANSCRIPT_BYTES = 16 * 1024


class VoiceError(ValueError):
    """The requested voice cannot be used; the message is safe to show to the client."""


@dataclass(frozen=True)
class Reference:
    audio: torch.Tensor  # (1, n) float32 mono at SAMPLE_RATE
    text: str

    @property
    def duration_s(self) -> float:
        return self.audio.shape[-1] / SAMPLE_RATE


def normalise_ref_text(text: str) -> str:
    """Upstream's rule: the transcript ends in sentence punctuation and a space."""
    text = text.strip()
    if text.endswith("。"):
        return text
    return f"{text} " if text.endswith(".") else f"{text}. "


def prepare_reference(path: Path, text: str) -> Reference:
    """Mono 24 kHz, clipped to 12 s, silence trimmed at the edges, 50 ms tail: upstream's
    ``preprocess_ref_audio_text`` without its temp files and without ffmpeg."""
    try:
        wave, sr = audio.read_mono(path, MAX_VOICE_SECONDS)
    except audio.AudioError as err:
        raise VoiceError(f"reference audio: {err}") from err
    wave = audio.resample(wave, sr, SAMPLE_RATE)[: int(REF_MAX_S * SAMPLE_RATE)]
    wave = audio.trim_silence_edges(wave, SAMPLE_RATE)
    if len(wave) < REF_MIN_S * SAMPLE_RATE:
        raise VoiceError(f"reference audio has less than {REF_MIN_S} s of sound")
    wave = np.concatenate([wave, np.zeros(int(REF_TAIL_S * SAMPLE_RATE), dtype=np.float32)])
    return Reference(audio=torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None], text=normalise_ref_text(text))


class VoiceLibrary:
    """Resolves voice names to prepared references, with a bounded LRU cache."""

    def __init__(self, client: BaseClient | None, bucket: BucketSettings, cache_size: int = 16):
        self.client = client
        self.bucket = bucket
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, Reference] = OrderedDict()

    def get(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """The prepared reference for ``name`` and whether it came from the cache."""
        if name == DEFAULT_VOICE:
            return self._default(ref_text, timings)
        if self.client is None or not self.bucket.configured:
            raise VoiceError(f"voice {name!r} needs a bucket, and BUCKET_NAME is not set")
        return self._from_s3(name, ref_text, workdir, timings)

    def _cached(self, key: tuple, build) -> tuple[Reference, bool]:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], True
        reference = build()
        self._cache[key] = reference
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return reference, False

    def _default(self, ref_text: str | None, timings: Timings) -> tuple[Reference, bool]:
        examples = files("f5_tts").joinpath("infer/examples/basic")
        text = ref_text or tomllib.loads(examples.joinpath("basic.toml").read_text())["ref_text"]
        path = Path(str(examples.joinpath("basic_ref_en.wav")))

        def build() -> Reference:
            with timings.measure("prepare_reference"):
                return prepare_reference(path, text)

        return self._cached((DEFAULT_VOICE, text), build)

    def _from_s3(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        bucket, prefix = self.bucket.name, self.bucket.voices_prefix
        with timings.measure("fetch_voice"):
            objects = {o["Key"]: o for o in s3_utils.list_s3_objects(self.client, bucket, f"{prefix}{name}.")}
        found = [objects[k] for k in (f"{prefix}{name}.{ext}" for ext in audio.VOICE_EXTENSIONS) if k in objects]
        if not found:
            raise VoiceError(f"voice {name!r} not found: no {prefix}{name}.{{{','.join(audio.VOICE_EXTENSIONS)}}} in the bucket")
        clip = found[0]
        if clip["Size"] > MAX_VOICE_BYTES:
            raise VoiceError(f"voice {name!r} is {clip['Size']} bytes, over the {MAX_VOICE_BYTES}-byte limit")
        if clip["Size"] == 0:
            raise VoiceError(f"voice {name!r}: {clip['Key']} is empty")
        transcript = objects.get(f"{prefix}{name}.txt")
        if ref_text is None and transcript is None:
            raise VoiceError(f"voice {name!r} has no transcript {prefix}{name}.txt; upload one or pass ref_text")
        if ref_text is None and transcript["Size"] > MAX_TRANSCRIPT_BYTES:
            raise VoiceError(f"voice {name!r}: transcript {transcript['Key']} is {transcript['Size']} bytes, "
                             f"over the {MAX_TRANSCRIPT_BYTES}-byte limit")
        text_key = ("override", ref_text) if ref_text is not None else ("etag", transcript["ETag"])

        def build() -> Reference:
            with timings.measure("fetch_voice"):
                try:
                    local = s3_utils.download_file(self.client, bucket, clip["Key"], workdir / Path(clip["Key"]).name,
                                                   max_bytes=MAX_VOICE_BYTES)
                    text = ref_text if ref_text is not None else s3_utils.read_text(self.client, bucket, transcript["Key"])
                except s3_utils.ObjectTooLarge as err:
                    raise VoiceError(f"voice {name!r}: {err}") from err
                except UnicodeDecodeError as err:
                    raise VoiceError(f"voice {name!r}: transcript {transcript['Key']} is not UTF-8 text") from err
            if not text.strip():
                raise VoiceError(f"voice {name!r}: transcript {prefix}{name}.txt is empty")
            with timings.measure("prepare_reference"):
                try:
                    reference = prepare_reference(local, text)
                except VoiceError as err:
                    raise VoiceError(f"voice {name!r}: {err}") from None
            log.info("prepared voice %s from s3://%s/%s", name, bucket, clip["Key"])
            return reference

        return self._cached((clip["Key"], clip["ETag"], text_key), build)
