"""Reference voices: the clip packaged with f5-tts, or ``<VOICES_PREFIX><name>.<ext>`` with its
``<name>.txt`` transcript in S3.

A prepared reference is cached in memory keyed by the S3 object's ETag and the transcript's, so
later jobs on the same voice neither download it again nor redo the preparation, and a replaced
voice (new ETag) is picked up on its next use.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botocore.client import BaseClient

from f5worker import audio, s3
from f5worker.asr import SpeechRecognizer
from f5worker.contract import DEFAULT_LIMITS, DEFAULT_VOICE, VOICE_NAME, JobLimits
from f5worker.formats import OUTPUT_FORMATS, SAMPLE_RATE, VOICE_EXTENSIONS
from f5worker.storage import BucketSettings
from f5worker.timings import Timings

log = logging.getLogger(__name__)

REF_MAX_S = 12.0  # F5-TTS is trained on references of at most ~12 s; upstream clips there too
REF_MIN_S = 0.5
REF_TAIL_S = 0.05  # upstream appends 50 ms of silence to the reference
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


def clean_reference_wave(path: Path, max_seconds: float = DEFAULT_LIMITS.voice_max_seconds) -> tuple[np.ndarray, float]:
    """Mono 24 kHz, clipped to 12 s, silence trimmed at the edges; also the source's length in
    seconds, to tell when the clip was cut. A source over ``max_seconds`` is refused."""
    try:
        wave, sr = audio.read_mono(path, max_seconds)
    except audio.AudioError as err:
        raise VoiceError(f"reference audio: {err}") from err
    source_s = len(wave) / sr
    wave = audio.resample(wave, sr, SAMPLE_RATE)[: int(REF_MAX_S * SAMPLE_RATE)]
    wave = audio.trim_silence_edges(wave, SAMPLE_RATE)
    if len(wave) < REF_MIN_S * SAMPLE_RATE:
        raise VoiceError(f"reference audio has less than {REF_MIN_S} s of sound")
    return wave, source_s


def prepare_audio(path: Path, max_seconds: float = DEFAULT_LIMITS.voice_max_seconds) -> torch.Tensor:
    """The reference clip as the model hears it, ``(1, n)`` float32 at ``SAMPLE_RATE``, with
    upstream's 50 ms silent tail."""
    wave, _ = clean_reference_wave(path, max_seconds)
    wave = np.concatenate([wave, np.zeros(int(REF_TAIL_S * SAMPLE_RATE), dtype=np.float32)])
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]


def prepare_reference(path: Path, text: str, max_seconds: float = DEFAULT_LIMITS.voice_max_seconds) -> Reference:
    """Upstream's ``preprocess_ref_audio_text`` without its temp files and without ffmpeg."""
    return Reference(audio=prepare_audio(path, max_seconds), text=normalise_ref_text(text))


@functools.cache
def builtin_voice() -> tuple[Path, str]:
    """The English clip packaged with f5-tts and its transcript (from upstream's basic.toml)."""
    examples = files("f5_tts").joinpath("infer/examples/basic")
    text = tomllib.loads(examples.joinpath("basic.toml").read_text())["ref_text"]
    return Path(str(examples.joinpath("basic_ref_en.wav"))), text


class VoiceLibrary:
    """Resolves voice names to prepared references, with a bounded LRU cache."""

    def __init__(self, client: BaseClient | None, bucket: BucketSettings, cache_size: int = 16,
                 recognizer: SpeechRecognizer | None = None, limits: JobLimits = DEFAULT_LIMITS):
        self.client = client
        self.bucket = bucket
        self.limits = limits  # the voice_max_* ones
        self.cache_size = cache_size
        self.recognizer = recognizer  # transcribes voices uploaded without a transcript; None: they are refused
        self._cache: OrderedDict[tuple, Reference] = OrderedDict()

    def get(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """The prepared reference for ``name`` and whether it came from the cache."""
        if name == DEFAULT_VOICE:
            return self._default(ref_text, timings)
        if not self.has_bucket:
            raise VoiceError(f"voice {name!r} needs a bucket, and BUCKET_NAME is not set")
        return self._from_s3(name, ref_text, workdir, timings)

    def list_voices(self) -> list[dict[str, Any]]:
        """Every usable voice: the built-in one, then the bucket's, by name."""
        builtin, builtin_text = builtin_voice()
        voices = [{"name": DEFAULT_VOICE, "builtin": True, "format": "wav", "transcript": builtin_text,
                   "size": builtin.stat().st_size, "last_modified": None}]
        if not self.has_bucket:
            return voices
        prefix = self.bucket.voices_prefix
        objects = {o["Key"]: o for o in s3.list_s3_objects(self.client, self.bucket.name, prefix)}
        names = sorted({Path(k[len(prefix):]).stem for k in objects})
        for name in names:
            clip = self._clip(objects, name) if VOICE_NAME.fullmatch(name) else None
            if clip is None:
                continue
            transcript = objects.get(f"{prefix}{name}.txt")
            voices.append({
                "name": name, "builtin": False, "format": clip["Key"].rsplit(".", 1)[1],
                "transcript": s3.read_text(self.client, self.bucket.name, transcript["Key"]) if transcript else None,
                "size": clip["Size"], "last_modified": clip["LastModified"].isoformat(),
            })
        return voices

    def store(self, name: str, source: Path, transcript: str, overwrite: bool, workdir: Path) -> dict[str, Any]:
        """Convert ``source`` to a clean mono 24 kHz WAV reference and store it as
        ``<name>.wav`` with ``<name>.txt``, replacing the voice's other files only if ``overwrite``."""
        self._require_bucket()
        wave, source_s = clean_reference_wave(source, self.limits.voice_max_seconds)
        existing = self._keys(name)
        if existing and not overwrite:
            raise VoiceError(f"voice {name!r} exists ({', '.join(existing)}); pass overwrite: true to replace it")
        bucket, prefix = self.bucket.name, self.bucket.voices_prefix
        out = workdir / f"{name}.wav"
        audio.write(wave, SAMPLE_RATE, "wav", out)
        audio_key, text_key = f"{prefix}{name}.wav", f"{prefix}{name}.txt"
        s3.upload_file(self.client, bucket, audio_key, out, OUTPUT_FORMATS["wav"].content_type)
        s3.put_text(self.client, bucket, text_key, transcript.strip())
        s3.delete_objects(self.client, bucket, [k for k in existing if k not in (audio_key, text_key)])
        log.info("stored voice %s (%.2fs of %.2fs) at s3://%s/%s", name, len(wave) / SAMPLE_RATE, source_s, bucket, audio_key)
        return {"name": name, "audio_key": audio_key, "transcript_key": text_key, "sample_rate": SAMPLE_RATE,
                "duration_s": round(len(wave) / SAMPLE_RATE, 3), "source_duration_s": round(source_s, 3),
                "clipped": source_s > REF_MAX_S}

    def delete(self, name: str) -> dict[str, Any]:
        """Remove the voice's clips and transcript."""
        self._require_bucket()
        keys = self._keys(name)
        if not keys:
            raise VoiceError(f"voice {name!r} not found")
        s3.delete_objects(self.client, self.bucket.name, keys)
        log.info("deleted voice %s: %s", name, keys)
        return {"name": name, "deleted": keys}

    @property
    def has_bucket(self) -> bool:
        return self.client is not None and self.bucket.configured

    def _require_bucket(self) -> None:
        if not self.has_bucket:
            raise VoiceError("voice management needs a bucket, and BUCKET_NAME is not set")

    def _keys(self, name: str) -> list[str]:
        """The voice's clip(s) and transcript in the bucket."""
        prefix = f"{self.bucket.voices_prefix}{name}."
        wanted = {f"{prefix}{ext}" for ext in (*VOICE_EXTENSIONS, "txt")}
        return sorted(o["Key"] for o in s3.list_s3_objects(self.client, self.bucket.name, prefix) if o["Key"] in wanted)

    def _clip(self, objects: dict[str, dict], name: str) -> dict | None:
        """The clip a job on ``name`` uses: the first of ``VOICE_EXTENSIONS`` present."""
        prefix = self.bucket.voices_prefix
        return next((objects[k] for k in (f"{prefix}{name}.{ext}" for ext in VOICE_EXTENSIONS) if k in objects), None)

    def _download_clip(self, name: str, clip: dict, workdir: Path) -> Path:
        """The listed clip into ``workdir``, cut off at ``voice_max_bytes`` (the object may have
        been replaced by a larger one since it was listed)."""
        try:
            return s3.download_file(self.client, self.bucket.name, clip["Key"], workdir / Path(clip["Key"]).name,
                                          max_bytes=self.limits.voice_max_bytes)
        except s3.ObjectTooLarge as err:
            raise VoiceError(f"voice {name!r}: {err}") from err

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
        path, builtin_text = builtin_voice()
        text = ref_text or builtin_text

        def build() -> Reference:
            with timings.measure("prepare_reference"):
                return prepare_reference(path, text, self.limits.voice_max_seconds)

        return self._cached((DEFAULT_VOICE, text), build)

    def _from_s3(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        bucket, prefix = self.bucket.name, self.bucket.voices_prefix
        with timings.measure("fetch_voice"):
            objects = {o["Key"]: o for o in s3.list_s3_objects(self.client, bucket, f"{prefix}{name}.")}
        clip = self._clip(objects, name)
        if clip is None:
            raise VoiceError(f"voice {name!r} not found: no {prefix}{name}.{{{','.join(VOICE_EXTENSIONS)}}} in the bucket")
        if clip["Size"] > (cap := self.limits.voice_max_bytes):
            raise VoiceError(f"voice {name!r} is {clip['Size']} bytes, over the {cap}-byte limit")
        if clip["Size"] == 0:
            raise VoiceError(f"voice {name!r}: {clip['Key']} is empty")
        transcript = objects.get(f"{prefix}{name}.txt")
        if ref_text is None and transcript is None:
            if self.recognizer is None:
                raise VoiceError(f"voice {name!r} has no transcript {prefix}{name}.txt; upload one or pass ref_text")
            return self._transcribed(name, clip, workdir, timings)
        if ref_text is None and transcript["Size"] > MAX_TRANSCRIPT_BYTES:
            raise VoiceError(f"voice {name!r}: transcript {transcript['Key']} is {transcript['Size']} bytes, "
                             f"over the {MAX_TRANSCRIPT_BYTES}-byte limit")
        text_key = ("override", ref_text) if ref_text is not None else ("etag", transcript["ETag"])

        def build() -> Reference:
            with timings.measure("fetch_voice"):
                local = self._download_clip(name, clip, workdir)
                try:
                    text = ref_text if ref_text is not None else s3.read_text(self.client, bucket, transcript["Key"])
                except UnicodeDecodeError as err:
                    raise VoiceError(f"voice {name!r}: transcript {transcript['Key']} is not UTF-8 text") from err
            if not text.strip():
                raise VoiceError(f"voice {name!r}: transcript {prefix}{name}.txt is empty")
            with timings.measure("prepare_reference"):
                try:
                    reference = prepare_reference(local, text, self.limits.voice_max_seconds)
                except VoiceError as err:
                    raise VoiceError(f"voice {name!r}: {err}") from None
            log.info("prepared voice %s from s3://%s/%s", name, bucket, clip["Key"])
            return reference

        return self._cached((clip["Key"], clip["ETag"], text_key), build)

    def _transcribed(self, name: str, clip: dict, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """Recognise the clip once and store ``<name>.txt`` beside it, so that no job, on this
        worker or any other, recognises it again: later jobs read the sidecar like any transcript,
        and this worker's cache holds the reference under the sidecar's ETag."""
        bucket, key = self.bucket.name, f"{self.bucket.voices_prefix}{name}.txt"
        with timings.measure("fetch_voice"):
            local = self._download_clip(name, clip, workdir)
        with timings.measure("prepare_reference"):
            wave = prepare_audio(local, self.limits.voice_max_seconds)
        with timings.measure("transcribe_reference"):
            text = self.recognizer.transcribe(wave[0].numpy(), SAMPLE_RATE, timings)
        if not text:
            raise VoiceError(f"voice {name!r} has no transcript {key} and no speech was recognised in it; upload one")
        with timings.measure("store_transcript"):
            etag = s3.put_text(self.client, bucket, key, text)
        log.info("transcribed voice %s and stored s3://%s/%s: %r", name, bucket, key, text)
        reference = Reference(audio=wave, text=normalise_ref_text(text))
        return self._cached((clip["Key"], clip["ETag"], ("etag", etag)), lambda: reference)
