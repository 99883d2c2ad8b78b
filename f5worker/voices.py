"""Reference voices: the clip packaged with f5-tts, or ``<VOICES_PREFIX><name>.<ext>`` with its
``<name>.txt`` transcript in S3 (extensions in any case).

A prepared reference is cached in memory keyed by the ETags of the clip and the transcript it
was made from. Both are read with If-Match on the ETags just listed, so the cached bytes are
those versions; an object replaced in between is listed and read again. A replaced voice is
picked up on its next use.

``upload_voice`` writes the transcript first, then the clip, each with the same ``voice-pair``
token in its metadata; a transcript made by speech recognition carries its clip's ETag there. A
job pairs such a transcript only with that clip, never one version's clip with another's
transcript; a transcript written by other means (no token) goes with whatever clip is there.
"""

from __future__ import annotations

import codecs
import functools
import logging
import threading
import time
import tomllib
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from f5worker import audio, s3
from f5worker.asr import SpeechRecognizer
from f5worker.contract import DEFAULT_LIMITS, DEFAULT_VOICE, VOICE_NAME, JobLimits
from f5worker.formats import OUTPUT_FORMATS, SAMPLE_RATE, VOICE_EXTENSIONS
from f5worker.storage import BucketSettings
from f5worker.timings import Timings

log = logging.getLogger(__name__)
T = TypeVar("T")

REF_MAX_S = 12.0  # F5-TTS is trained on references of at most ~12 s; upstream clips there too
REF_MIN_S = 0.5
REF_TAIL_S = 0.05  # upstream appends 50 ms of silence to the reference
# Limits on a voice in the bucket. Sizes are checked against the listing before any download (and
# the download is cut at the cap); the duration from the file's header, before decoding.
MAX_TRANSCRIPT_BYTES = 16 * 1024
LIST_TRANSCRIPT_BYTES = 1024  # list_voices returns at most this much of each transcript
LIST_THREADS = 8  # transcripts read at once by list_voices (botocore pools 10 connections)
PAIR_KEY = "voice-pair"  # user metadata naming the clip a transcript was stored with
READ_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)  # a voice that changed while read is listed again after these


class VoiceError(ValueError):
    """The requested voice cannot be used; the message is safe to show to the client."""


class VoiceNotFound(VoiceError):
    """No voice of that name: not in the bucket, or there is no bucket (the HTTP server's 404)."""


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
    seconds, to tell when the clip was cut."""
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


class _Changed(Exception):
    """The voice changed while it was read; a fresh listing may find it whole."""


def decode_transcript(data: bytes, complete: bool = True) -> str:
    """A transcript's text as jobs and listings see it: UTF-8 without a BOM, ``\n`` line ends,
    edges stripped. ``complete`` False: ``data`` is the object's start, and a character cut at the
    end is dropped. Raises UnicodeDecodeError."""
    text = codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=complete)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def pair_token(metadata: dict[str, str], etag: str) -> str:
    """What a transcript names to say it belongs to a clip: the clip's ``voice-pair`` token, or
    its ETag for a clip stored without one."""
    return metadata.get(PAIR_KEY) or etag.strip('"')


@dataclass(frozen=True)
class VoiceFiles:
    """A voice's objects in a listing, by key, and the clip and transcript a job uses."""
    objects: dict[str, dict[str, Any]]
    clip: dict[str, Any] | None
    transcript: dict[str, Any] | None


def voice_files(listing: list[dict[str, Any]], prefix: str) -> dict[str, VoiceFiles]:
    """The voices in a listing under ``prefix``, by name, extensions in any case."""
    found: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for obj in listing:
        name, dot, ext = obj["Key"][len(prefix):].rpartition(".")
        if dot and VOICE_NAME.fullmatch(name) and ext.lower() in (*VOICE_EXTENSIONS, "txt"):
            found[name][obj["Key"]] = obj
    return {name: VoiceFiles(objects, _first(objects, VOICE_EXTENSIONS), _first(objects, ("txt",)))
            for name, objects in found.items()}


def extension(key: str) -> str:
    return key.rpartition(".")[2].lower()


def _first(objects: dict[str, dict[str, Any]], extensions: tuple[str, ...]) -> dict[str, Any] | None:
    """The object with the first of ``extensions`` present; of ``a.wav`` and ``a.WAV``, ``a.wav``."""
    def rank(key: str) -> tuple:
        return extensions.index(extension(key)), not key.endswith(extension(key)), key

    keys = [key for key in objects if extension(key) in extensions]
    return objects[min(keys, key=rank)] if keys else None


def retry_changes(attempt: Callable[[], T], changed: type[Exception]) -> T:
    """``attempt()``, run again after each of ``READ_RETRY_DELAYS_S`` while it raises ``changed``
    (what it read or wrote changed meanwhile); the last try's error propagates."""
    for delay in READ_RETRY_DELAYS_S:
        try:
            return attempt()
        except changed as err:
            log.info("%s; trying again in %.2f s", err, delay)
            time.sleep(delay)
    return attempt()


class VoiceLibrary:
    """Resolves voice names to prepared references, with a bounded LRU cache shared by the job
    threads: one thread prepares a reference while the others asking for it wait for its result."""

    def __init__(self, client: BaseClient | None, bucket: BucketSettings, cache_size: int = 16,
                 recognizer: SpeechRecognizer | None = None, limits: JobLimits = DEFAULT_LIMITS):
        self.client = client
        self.bucket = bucket
        self.limits = limits  # the voice_max_* ones
        self.cache_size = cache_size
        self.recognizer = recognizer  # transcribes voices uploaded without a transcript; None: they are refused
        self._cache: OrderedDict[tuple, Reference] = OrderedDict()
        self._flights: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        # the first bytes and the size of each transcript in the last listing, by (key, ETag)
        self._starts: dict[tuple[str, str], tuple[bytes, int]] = {}

    def get(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """The prepared reference for ``name`` and whether it came from the cache (or from another
        job that prepared it meanwhile)."""
        if name == DEFAULT_VOICE:
            return self._default(ref_text, timings)
        if not self.has_bucket:
            raise VoiceNotFound(f"voice {name!r} needs a bucket, and BUCKET_NAME is not set")
        return self._from_s3(name, ref_text, workdir, timings)

    def list_voices(self) -> list[dict[str, Any]]:
        """The built-in voice, then every bucket voice with a clip, by name. A voice a job would
        refuse carries the reason in ``error``; transcripts are cut at ``LIST_TRANSCRIPT_BYTES``,
        and read only when new or changed since the last listing."""
        builtin, builtin_text = builtin_voice()
        voices = [{"name": DEFAULT_VOICE, "builtin": True, "format": "wav", "transcript": builtin_text,
                   "transcript_truncated": False, "size": builtin.stat().st_size, "last_modified": None,
                   "error": None}]
        if not self.has_bucket:
            return voices
        prefix = self.bucket.voices_prefix
        found = voice_files(s3.list_s3_objects(self.client, self.bucket.name, prefix), prefix)
        listed = [(name, files) for name, files in sorted(found.items()) if files.clip is not None]
        with ThreadPoolExecutor(LIST_THREADS) as pool:
            voices.extend(entry for entry in pool.map(lambda item: self._listed(*item), listed) if entry)
        current = {(t["Key"], t["ETag"]) for _, files in listed if (t := files.transcript)}
        with self._lock:
            self._starts = {version: start for version, start in self._starts.items() if version in current}
        return voices

    def store(self, name: str, source: Path, transcript: str, overwrite: bool, workdir: Path) -> dict[str, Any]:
        """Convert ``source`` to a clean mono 24 kHz WAV reference and store it as
        ``<name>.wav`` with ``<name>.txt``. Without ``overwrite``, only if the voice has no file
        (create-only writes: of two simultaneous uploads, one stores and the other is refused);
        with it, the voice's other files go."""
        self._require_bucket()
        wave, source_s = clean_reference_wave(source, self.limits.voice_max_seconds)
        out = workdir / f"{name}.wav"
        audio.write(wave, SAMPLE_RATE, "wav", out)
        bucket, prefix = self.bucket.name, self.bucket.voices_prefix
        audio_key, text_key = f"{prefix}{name}.wav", f"{prefix}{name}.txt"

        def attempt() -> dict[str, str]:
            existing = self._files(name)
            if existing and not overwrite:
                raise VoiceError(f"voice {name!r} already exists ({', '.join(sorted(existing.objects))}); "
                                 "pass overwrite: true to replace it")
            etags = {key: obj["ETag"] for key, obj in existing.objects.items()} if existing else {}
            self._write_pair(etags, audio_key, out, text_key, transcript.strip())
            return etags

        try:
            replaced = retry_changes(attempt, s3.ObjectChanged) if overwrite else attempt()
        except s3.ObjectChanged:
            raise VoiceError(f"voice {name!r} kept changing while it was replaced; try again" if overwrite else
                             f"voice {name!r} already exists (stored by another upload meanwhile); "
                             "pass overwrite: true to replace it") from None
        s3.delete_objects(self.client, bucket, [k for k in replaced if k not in (audio_key, text_key)])
        log.info("stored voice %s (%.2fs of %.2fs) at s3://%s/%s", name, len(wave) / SAMPLE_RATE, source_s, bucket,
                 audio_key)
        return {"name": name, "audio_key": audio_key, "transcript_key": text_key, "sample_rate": SAMPLE_RATE,
                "duration_s": round(len(wave) / SAMPLE_RATE, 3), "source_duration_s": round(source_s, 3),
                "clipped": source_s > REF_MAX_S}

    def delete(self, name: str) -> dict[str, Any]:
        """Remove the voice's clips, then its transcripts (so that no job meanwhile finds a clip
        stored with a transcript without it)."""
        self._require_bucket()
        files = self._files(name)
        if files is None:
            raise VoiceNotFound(f"voice {name!r} not found")
        transcripts = [k for k in files.objects if extension(k) == "txt"]
        s3.delete_objects(self.client, self.bucket.name, [k for k in files.objects if k not in transcripts])
        s3.delete_objects(self.client, self.bucket.name, transcripts)
        log.info("deleted voice %s: %s", name, sorted(files.objects))
        return {"name": name, "deleted": sorted(files.objects)}

    @property
    def has_bucket(self) -> bool:
        return self.client is not None and self.bucket.configured

    def _require_bucket(self) -> None:
        if not self.has_bucket:
            raise VoiceError("voice management needs a bucket, and BUCKET_NAME is not set")

    def _files(self, name: str) -> VoiceFiles | None:
        """The voice's objects in the bucket now; None when it has none."""
        prefix = self.bucket.voices_prefix
        return voice_files(s3.list_s3_objects(self.client, self.bucket.name, f"{prefix}{name}."), prefix).get(name)

    def _write_pair(self, etags: dict[str, str], audio_key: str, wav: Path, text_key: str, text: str) -> None:
        """The transcript, then the clip, with one new pair token; each written only over the
        version listed in ``etags`` (or only if absent). A failed condition raises
        :class:`s3.ObjectChanged`; a transcript already written is then taken back."""
        token = {PAIR_KEY: uuid.uuid4().hex}
        bucket = self.bucket.name

        def conditions(key: str) -> dict[str, Any]:
            return {"if_match": etags[key]} if key in etags else {"create_only": True}

        text_etag = s3.put_text(self.client, bucket, text_key, text, metadata=token, **conditions(text_key))
        try:
            s3.upload_file(self.client, bucket, audio_key, wav, OUTPUT_FORMATS["wav"].content_type, metadata=token,
                           **conditions(audio_key))
        except s3.ObjectChanged:
            if text_key not in etags:  # ours alone: take it back, unless replaced meanwhile
                try:
                    s3.delete_object(self.client, bucket, text_key, if_match=text_etag)
                except ClientError as err:
                    log.warning("could not take back %s: %s", text_key, err)
            raise

    def _check(self, name: str, files: VoiceFiles | None, ref_text: str | None) -> None:
        """Refuse what the listing alone shows unusable, before any download."""
        prefix = self.bucket.voices_prefix
        clip = files.clip if files else None
        if clip is None:
            raise VoiceNotFound(f"voice {name!r} not found: no {prefix}{name}.{{{','.join(VOICE_EXTENSIONS)}}} "
                             "in the bucket")
        if clip["Size"] > (cap := self.limits.voice_max_bytes):
            raise VoiceError(f"voice {name!r} is {clip['Size']} bytes, over the {cap}-byte limit")
        if clip["Size"] == 0:
            raise VoiceError(f"voice {name!r}: {clip['Key']} is empty")
        transcript = files.transcript
        if ref_text is None and transcript is None and self.recognizer is None:
            raise VoiceError(f"voice {name!r} has no transcript {prefix}{name}.txt; upload one or pass ref_text")
        if ref_text is None and transcript is not None and transcript["Size"] > MAX_TRANSCRIPT_BYTES:
            raise VoiceError(f"voice {name!r}: transcript {transcript['Key']} is {transcript['Size']} bytes, "
                             f"over the {MAX_TRANSCRIPT_BYTES}-byte limit")

    def _listed(self, name: str, files: VoiceFiles) -> dict[str, Any] | None:
        """One voice's entry in ``list_voices``; a problem with it goes in its ``error``. None when
        its transcript went after the listing (the voice is being deleted: clips go first)."""
        clip = files.clip
        entry = {"name": name, "builtin": False, "format": extension(clip["Key"]), "transcript": None,
                 "transcript_truncated": False, "size": clip["Size"], "last_modified": clip["LastModified"].isoformat(),
                 "error": None}
        try:
            if files.transcript is not None:
                entry["transcript"], entry["transcript_truncated"] = self._transcript_start(name, files.transcript)
            self._check(name, files, None)
        except VoiceError as err:
            entry["error"] = str(err)
        except s3.ObjectChanged:
            return None
        except ClientError as err:
            entry["error"] = f"voice {name!r}: {s3.describe_error(err, self.bucket.name)}"
        return entry

    def _transcript_start(self, name: str, transcript: dict[str, Any]) -> tuple[str, bool]:
        """The first ``LIST_TRANSCRIPT_BYTES`` of a transcript, and whether there is more."""
        data, size = self._starts.get((transcript["Key"], transcript["ETag"])) or self._read_start(transcript)
        return self._transcript_text(name, transcript["Key"], data, complete=size == len(data)), size > len(data)

    def _read_start(self, transcript: dict[str, Any]) -> tuple[bytes, int]:
        """A transcript's first bytes and its size, remembered under the ETag they were read from."""
        cut = transcript["Size"] > LIST_TRANSCRIPT_BYTES  # a Range on an empty object would be refused
        response = s3.get_object(self.client, self.bucket.name, transcript["Key"],
                                 first_bytes=LIST_TRANSCRIPT_BYTES if cut else None)
        data = s3.read_body(response)
        size = int(response.get("ContentRange", "").rpartition("/")[2] or len(data))
        start = (data[:LIST_TRANSCRIPT_BYTES], size)
        with self._lock:
            self._starts[(transcript["Key"], response["ETag"])] = start
        return start

    def _transcript_text(self, name: str, key: str, data: bytes, complete: bool = True) -> str:
        try:
            text = decode_transcript(data, complete)
        except UnicodeDecodeError as err:
            raise VoiceError(f"voice {name!r}: transcript {key} is not UTF-8 text") from err
        if not text:
            raise VoiceError(f"voice {name!r}: transcript {key} is empty")
        return text

    def _get(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The listed version of ``obj`` (If-Match its ETag); a newer one, or none, raises _Changed."""
        try:
            return s3.get_object(self.client, self.bucket.name, obj["Key"], if_match=obj["ETag"])
        except s3.ObjectChanged:
            raise _Changed(f"{obj['Key']} changed after it was listed") from None

    def _download_clip(self, name: str, clip: dict[str, Any], workdir: Path,
                       pair: str | None = None) -> tuple[Path, dict[str, str]]:
        """The listed clip into ``workdir``, cut off at ``voice_max_bytes``, and its metadata.
        ``pair``: the token of the transcript it goes with; another clip raises _Changed unread."""
        response = self._get(clip)
        if pair is not None and pair != pair_token(response["Metadata"], clip["ETag"]):
            response["Body"].close()
            raise _Changed(f"the transcript was stored with another clip than {clip['Key']}")
        try:
            local = s3.save_body(response, workdir / Path(clip["Key"]).name, self.limits.voice_max_bytes,
                                 f"s3://{self.bucket.name}/{clip['Key']}")
        except s3.ObjectTooLarge as err:
            raise VoiceError(f"voice {name!r}: {err}") from err
        return local, response["Metadata"]

    def _single_flight(self, key: tuple, work: Callable[[], Reference]) -> tuple[Reference, bool]:
        """The cached reference for ``key``, or ``work()``'s, run by one thread per key: others
        asking meanwhile wait for it and share its result or its error (and get True)."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = Future()
        if not owner:
            return flight.result(), True
        try:
            reference = work()
        except BaseException as err:
            self._land(key).set_exception(err)
            raise
        self._land(key).set_result(reference)
        return reference, False

    def _land(self, key: tuple) -> Future:
        """The flight for ``key``, taken off the list before its waiters wake."""
        with self._lock:
            return self._flights.pop(key)

    def _remember(self, key: tuple, reference: Reference) -> Reference:
        with self._lock:
            self._cache[key] = reference
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return reference

    def _cached(self, key: tuple, build: Callable[[], Reference]) -> tuple[Reference, bool]:
        return self._single_flight(key, lambda: self._remember(key, build()))

    def _default(self, ref_text: str | None, timings: Timings) -> tuple[Reference, bool]:
        path, builtin_text = builtin_voice()
        text = ref_text or builtin_text

        def build() -> Reference:
            with timings.measure("prepare_reference"):
                return prepare_reference(path, text, self.limits.voice_max_seconds)

        return self._cached((DEFAULT_VOICE, text), build)

    def _from_s3(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """List the voice, check it, and read the listed versions; when they change meanwhile (or
        the transcript belongs to another clip: a replacement half done), list again, a few times."""
        try:
            return retry_changes(lambda: self._reference(name, ref_text, workdir, timings), _Changed)
        except _Changed as err:
            raise VoiceError(f"voice {name!r}: {err}, and still after {len(READ_RETRY_DELAYS_S)} retries; unless it "
                             "is being replaced right now, upload it again") from None

    def _reference(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        with timings.measure("fetch_voice"):
            files = self._files(name)
        self._check(name, files, ref_text)
        clip, transcript = files.clip, files.transcript
        if ref_text is not None:
            return self._cached((clip["Key"], clip["ETag"], ("override", ref_text)),
                                lambda: self._prepared(name, self._download_clip(name, clip, workdir)[0], ref_text,
                                                       clip["Key"], timings))
        if transcript is None:
            return self._single_flight(("transcribe", clip["Key"], clip["ETag"]),
                                       lambda: self._transcribed(name, clip, workdir, timings))
        return self._cached((clip["Key"], clip["ETag"], ("etag", transcript["ETag"])),
                            lambda: self._paired(name, clip, transcript, workdir, timings))

    def _paired(self, name: str, clip: dict[str, Any], transcript: dict[str, Any], workdir: Path,
                timings: Timings) -> Reference:
        """The listed transcript and clip, which must belong together when the transcript says
        which clip it was stored with."""
        with timings.measure("fetch_voice"):
            response = self._get(transcript)
            data = s3.read_body(response)
            local, _ = self._download_clip(name, clip, workdir, pair=response["Metadata"].get(PAIR_KEY))
        text = self._transcript_text(name, transcript["Key"], data)
        return self._prepared(name, local, text, clip["Key"], timings)

    def _prepared(self, name: str, local: Path, text: str, clip_key: str, timings: Timings) -> Reference:
        with timings.measure("prepare_reference"):
            try:
                reference = prepare_reference(local, text, self.limits.voice_max_seconds)
            except VoiceError as err:
                raise VoiceError(f"voice {name!r}: {err}") from None
        log.info("prepared voice %s from s3://%s/%s", name, self.bucket.name, clip_key)
        return reference

    def _transcribed(self, name: str, clip: dict[str, Any], workdir: Path, timings: Timings) -> Reference:
        """Recognise the clip once and store ``<name>.txt`` beside it, create-only (a transcript
        that appeared meanwhile is kept and used instead), so that no job, on this worker or any
        other, recognises it again: later jobs read it like any transcript, and this worker's
        cache holds the reference under its ETag."""
        bucket, key = self.bucket.name, f"{self.bucket.voices_prefix}{name}.txt"
        with timings.measure("fetch_voice"):
            local, metadata = self._download_clip(name, clip, workdir)
        if PAIR_KEY in metadata:
            raise _Changed(f"{clip['Key']} was stored with a transcript, and {key} is missing")
        with timings.measure("prepare_reference"):
            wave = prepare_audio(local, self.limits.voice_max_seconds)
        with timings.measure("transcribe_reference"):
            text = self.recognizer.transcribe(wave[0].numpy(), SAMPLE_RATE, timings)
        if not text:
            raise VoiceError(f"voice {name!r} has no transcript {key} and no speech was recognised in it; upload one")
        with timings.measure("store_transcript"):
            try:
                etag = s3.put_text(self.client, bucket, key, text, create_only=True,
                                   metadata={PAIR_KEY: pair_token(metadata, clip["ETag"])})
            except s3.ObjectChanged:
                raise _Changed(f"{key} appeared while the clip was transcribed") from None
        log.info("transcribed voice %s and stored s3://%s/%s: %r", name, bucket, key, text)
        reference = Reference(audio=wave, text=normalise_ref_text(text))
        return self._remember((clip["Key"], clip["ETag"], ("etag", etag)), reference)
