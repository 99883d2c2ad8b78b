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

F5-TTS uses at most ``REF_MAX_S`` of a reference, cut at a pause. A transcript of a longer clip may
cover more than that part, and the model then speaks the difference as garbage, so a clip that
was cut is used only with a transcript made by speech recognition of the part used: ``<name>.txt``
when Whisper wrote it (its ``voice-pair`` is the clip's ETag, where an upload's is a random
token), else ``<name>.clip.txt``, written once beside the voice and valid for the
clip and the ``<name>.txt`` it was made with (its metadata names both). Without speech recognition
such a voice is refused with the two ways out.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import logging
import threading
import time
import tomllib
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from f5worker import audio, s3
from f5worker.asr import SpeechRecognizer
from f5worker.contract import DEFAULT_LIMITS, DEFAULT_VOICE, VOICE_NAME, JobLimits, voice_stem
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
OF_TRANSCRIPT_KEY = "of-transcript"  # on <name>.clip.txt: the ETag of the <name>.txt it was made with, or "none"
CLIP_TRANSCRIPT = ".clip.txt"  # <name>.clip.txt: Whisper's transcript of the part of a long clip that is used
# A listing with speech recognition off reads the length of a clip (a few ranged GETs of HEADER_BLOCK
# bytes, at most HEADER_BLOCKS, remembered per ETag) only when its transcript holds more than 12 s of
# speech usually does; a job knows the length of every clip it reads.
LONG_TRANSCRIPT_BYTES = 200
HEADER_BLOCK = 16 * 1024
HEADER_BLOCKS = 8
READ_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)  # a voice that changed while read is listed again after these


class VoiceError(ValueError):
    """The requested voice cannot be used; the message is safe to show to the client."""


class VoiceNotFound(VoiceError):
    """No voice of that name: not in the bucket, or there is no bucket (the HTTP server's 404)."""


@dataclass(frozen=True)
class Clip:
    """A reference clip as the model hears it: mono at ``SAMPLE_RATE``, silent edges trimmed, at
    most ``REF_MAX_S`` long."""

    wave: np.ndarray
    source_s: float  # the source's length
    clipped: bool  # sound was cut off to fit: a transcript of the whole source covers more than ``wave``


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


def clean_reference_wave(path: Path, max_seconds: float = DEFAULT_LIMITS.voice_max_seconds) -> Clip:
    """Mono 24 kHz, silence trimmed at the edges, and when the sound is longer than ``REF_MAX_S``,
    cut where a pause starts (``audio.cut_at_pause``) and trimmed again."""
    try:
        wave, sr = audio.read_mono(path, max_seconds)
    except audio.AudioError as err:
        raise VoiceError(f"reference audio: {err}") from err
    source_s = len(wave) / sr
    wave = audio.trim_silence_edges(audio.resample(wave, sr, SAMPLE_RATE), SAMPLE_RATE)
    keep = audio.cut_at_pause(wave, SAMPLE_RATE, int(REF_MAX_S * SAMPLE_RATE))
    clipped = keep < len(wave)
    if clipped:
        wave = audio.trim_silence_edges(wave[:keep], SAMPLE_RATE)
    if len(wave) < REF_MIN_S * SAMPLE_RATE:
        raise VoiceError(f"reference audio has less than {REF_MIN_S} s of sound")
    return Clip(wave, source_s, clipped)


def with_tail(wave: np.ndarray) -> torch.Tensor:
    """``wave`` as the model takes it, ``(1, n)`` float32, with upstream's 50 ms silent tail."""
    wave = np.concatenate([wave, np.zeros(int(REF_TAIL_S * SAMPLE_RATE), dtype=np.float32)])
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]


def prepare_audio(path: Path, max_seconds: float = DEFAULT_LIMITS.voice_max_seconds) -> torch.Tensor:
    """The reference clip as the model hears it, ``(1, n)`` float32 at ``SAMPLE_RATE``."""
    return with_tail(clean_reference_wave(path, max_seconds).wave)


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


def too_long(what: str, seconds: float, transcript: str, fixes: str) -> str:
    """Why a clip that was cut cannot go with ``transcript``, and ``fixes``."""
    return (f"{what} is {seconds:.1f} s long and F5-TTS uses at most {REF_MAX_S:g} s of it (cut at a pause), so "
            f"{transcript} may cover more than the part used: {fixes}, or set ASR_ENABLED=1 to transcribe the part "
            "used")


def stored_voice_fixes(name: str) -> str:
    return (f"store it again with upload_voice (name {name!r}), which clips it at a pause and keeps the transcript "
            "you give for the part kept (the first duration_s seconds of sound)")


def whispered(pair: str | None, clip: dict[str, Any]) -> bool:
    """Whether a transcript whose ``voice-pair`` token is ``pair`` was made by Whisper of the listed
    clip (of the part used), which is then the token: an upload's is a random one."""
    return pair == clip["ETag"].strip('"')


def pair_token(metadata: dict[str, str], etag: str) -> str:
    """What a transcript names to say it belongs to a clip: the clip's ``voice-pair`` token, or
    its ETag for a clip stored without one."""
    return metadata.get(PAIR_KEY) or etag.strip('"')


@dataclass(frozen=True)
class VoiceFiles:
    """A voice's objects in a listing, by key, and the clip and transcripts a job uses."""
    objects: dict[str, dict[str, Any]]
    clip: dict[str, Any] | None
    transcript: dict[str, Any] | None
    clip_transcript: dict[str, Any] | None = None  # <name>.clip.txt

    def exactly(self, key: str) -> VoiceFiles:
        """The same voice with the clip ``key`` (a voice asked for by its file name), None if absent."""
        return replace(self, clip=self.objects.get(key) if extension(key) in VOICE_EXTENSIONS else None)


def voice_files(listing: list[dict[str, Any]], prefix: str) -> dict[str, VoiceFiles]:
    """The voices in a listing under ``prefix``, by name, extensions in any case."""
    found: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for obj in listing:
        name, ext = _name_and_extension(obj["Key"][len(prefix):])
        if VOICE_NAME.fullmatch(name) and ext in (*VOICE_EXTENSIONS, "txt"):
            found[name][obj["Key"]] = obj
    return {name: VoiceFiles(objects, _first(objects, VOICE_EXTENSIONS), _first(objects, ("txt",)),
                             objects.get(f"{prefix}{name}{CLIP_TRANSCRIPT}"))
            for name, objects in found.items()}


def unusable_clips(listing: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The audio files under ``prefix`` whose names are not voice names (a space, a dot, a folder...)."""
    named = [(obj, *_name_and_extension(obj["Key"][len(prefix):])) for obj in listing]
    return [obj for obj, name, ext in named if ext in VOICE_EXTENSIONS and not VOICE_NAME.fullmatch(name)]


def _name_and_extension(relative_key: str) -> tuple[str, str]:
    """``("a", "wav")`` for ``a.WAV``; the name of ``a.clip.txt``, a voice's derived transcript, is ``a``."""
    if relative_key.endswith(CLIP_TRANSCRIPT):
        return relative_key[: -len(CLIP_TRANSCRIPT)], "txt"
    name, dot, ext = relative_key.rpartition(".")
    return (name, ext.lower()) if dot else (relative_key, "")


def extension(key: str) -> str:
    return key.rpartition(".")[2].lower()


def _first(objects: dict[str, dict[str, Any]], extensions: tuple[str, ...]) -> dict[str, Any] | None:
    """The object with the first of ``extensions`` present; of ``a.wav`` and ``a.WAV``, ``a.wav``
    (never a derived ``.clip.txt``)."""
    def rank(key: str) -> tuple:
        return extensions.index(extension(key)), not key.endswith(extension(key)), key

    keys = [key for key in objects if extension(key) in extensions and not key.endswith(CLIP_TRANSCRIPT)]
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
        # the first bytes, the size and the voice-pair token of each transcript in the last listing, by (key, ETag)
        self._starts: dict[tuple[str, str], tuple[bytes, int, str | None]] = {}
        self._durations: dict[tuple[str, str], float] = {}  # clips' lengths in seconds, by (key, ETag)

    def get(self, name: str, ref_text: str | None, workdir: Path, timings: Timings) -> tuple[Reference, bool]:
        """The prepared reference for ``name`` (a voice name, or the file name of a clip) and
        whether it came from the cache (or from another job that prepared it meanwhile)."""
        if name == DEFAULT_VOICE:
            return self._default(ref_text, timings)
        if not self.has_bucket:
            raise VoiceNotFound(f"voice {name!r} needs a bucket, and BUCKET_NAME is not set")
        return self._from_s3(name, ref_text, workdir, timings)

    def job_reference(self, source: Path, ref_text: str | None, timings: Timings) -> tuple[Reference, bool]:
        """A job's own reference clip (``ref_audio_base64``/``ref_audio_url``), prepared once per
        content and ``ref_text`` in the same bounded cache as the voices; without ``ref_text``, or
        when the clip was cut, transcribed by Whisper."""
        digest = hashlib.sha256(source.read_bytes()).hexdigest()

        def build() -> Reference:
            clip = self._clean("ref_audio", source, timings)
            if ref_text is not None and not clip.clipped:
                return Reference(audio=with_tail(clip.wave), text=normalise_ref_text(ref_text))
            if self.recognizer is None:
                raise VoiceError(too_long("ref_audio", clip.source_s, "ref_text",
                                          f"send at most {REF_MAX_S:g} s of audio with its ref_text"))
            wave = with_tail(clip.wave)
            return Reference(audio=wave, text=normalise_ref_text(self._recognise("ref_audio", wave, timings)))

        return self._cached(("ref_audio", digest, ref_text), build)

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
        listing = s3.list_s3_objects(self.client, self.bucket.name, prefix)
        found = voice_files(listing, prefix)
        listed = [(name, files) for name, files in sorted(found.items()) if files.clip is not None]
        with ThreadPoolExecutor(LIST_THREADS) as pool:
            entries = [entry for entry in pool.map(lambda item: self._listed(*item), listed) if entry]
        entries.extend(self._unusable(obj) for obj in unusable_clips(listing, prefix))
        voices.extend(sorted(entries, key=lambda entry: entry["name"]))
        current = {(t["Key"], t["ETag"]) for _, files in listed if (t := files.transcript)}
        clips = {(obj["Key"], obj["ETag"]) for obj in listing}
        with self._lock:
            self._starts = {version: start for version, start in self._starts.items() if version in current}
            self._durations = {version: s for version, s in self._durations.items() if version in clips}
        return voices

    def store(self, name: str, source: Path, transcript: str, overwrite: bool, workdir: Path) -> dict[str, Any]:
        """Convert ``source`` to a clean mono 24 kHz WAV reference and store it as
        ``<name>.wav`` with ``<name>.txt``. Without ``overwrite``, only if the voice has no file
        (create-only writes: of two simultaneous uploads, one stores and the other is refused);
        with it, the voice's other files go."""
        self._require_bucket()
        clip = clean_reference_wave(source, self.limits.voice_max_seconds)
        wave, source_s = clip.wave, clip.source_s
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
                "clipped": clip.clipped}

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
        """The voice's objects in the bucket now; None when it has none. ``name``: a voice name, or
        a clip's file name, which then is the clip."""
        prefix, stem = self.bucket.voices_prefix, voice_stem(name)
        files = voice_files(s3.list_s3_objects(self.client, self.bucket.name, f"{prefix}{stem}."), prefix).get(stem)
        return files.exactly(f"{prefix}{name}") if files is not None and name != stem else files

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
            extensions = "" if voice_stem(name) != name else f".{{{','.join(VOICE_EXTENSIONS)}}}"
            raise VoiceNotFound(f"voice {name!r} not found: no {prefix}{name}{extensions} in the bucket")
        if clip["Size"] > (cap := self.limits.voice_max_bytes):
            raise VoiceError(f"voice {name!r} is {clip['Size']} bytes, over the {cap}-byte limit")
        if clip["Size"] == 0:
            raise VoiceError(f"voice {name!r}: {clip['Key']} is empty")
        transcript = files.transcript
        if ref_text is None and transcript is None and self.recognizer is None:
            raise VoiceError(f"voice {name!r} has no transcript {prefix}{voice_stem(name)}.txt; upload one or pass "
                             "ref_text")
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
            pair = None
            if files.transcript is not None:
                text, entry["transcript_truncated"], pair = self._transcript_start(name, files.transcript)
                entry["transcript"] = text
            self._check(name, files, None)
            if not whispered(pair, clip):
                self._check_length(name, files)
        except VoiceError as err:
            entry["error"] = str(err)
        except s3.ObjectChanged:
            return None
        except ClientError as err:
            entry["error"] = f"voice {name!r}: {s3.describe_error(err, self.bucket.name)}"
        return entry

    def _unusable(self, clip: dict[str, Any]) -> dict[str, Any]:
        """The listing's entry for an audio file whose name is not a voice name."""
        name = clip["Key"][len(self.bucket.voices_prefix):].rpartition(".")[0]
        return {"name": name, "builtin": False, "format": extension(clip["Key"]), "transcript": None,
                "transcript_truncated": False, "size": clip["Size"], "last_modified": clip["LastModified"].isoformat(),
                "error": f"{clip['Key']}: {name!r} is not a voice name (1-64 letters, digits, '-' or '_', starting "
                         "with a letter or digit, no folder); rename the clip and its transcript to use it"}

    def _check_length(self, name: str, files: VoiceFiles) -> None:
        """With speech recognition off, refuse a clip over ``REF_MAX_S`` with a transcript written by
        hand (not made of the part used); the clip's length is read (or known from a job) only when the transcript
        holds more than ``REF_MAX_S`` of speech usually does."""
        transcript = files.transcript
        if self.recognizer is not None or transcript is None:
            return
        seconds = self._durations.get((files.clip["Key"], files.clip["ETag"]))
        if seconds is None and transcript["Size"] > LONG_TRANSCRIPT_BYTES:
            seconds = self._header_duration(files.clip)
        if seconds is not None and seconds > REF_MAX_S:
            raise VoiceError(too_long(f"voice {name!r}", seconds, f"its transcript {transcript['Key']}",
                                      stored_voice_fixes(voice_stem(name))))

    def _header_duration(self, clip: dict[str, Any]) -> float | None:
        """The clip's length from its header, read with a few ranged GETs; None when that is not enough."""
        reader = s3.RangedReader(self.client, self.bucket.name, clip, HEADER_BLOCK, HEADER_BLOCKS)
        try:
            seconds = audio.header_duration(reader)
        except audio.AudioError:
            return None
        if reader.incomplete:
            return None
        with self._lock:
            self._durations[(clip["Key"], clip["ETag"])] = seconds
        return seconds

    def _transcript_start(self, name: str, transcript: dict[str, Any]) -> tuple[str, bool, str | None]:
        """The first ``LIST_TRANSCRIPT_BYTES`` of a transcript, whether there is more, and its
        ``voice-pair`` token."""
        data, size, pair = self._starts.get((transcript["Key"], transcript["ETag"])) or self._read_start(transcript)
        return self._transcript_text(name, transcript["Key"], data, complete=size == len(data)), size > len(data), pair

    def _read_start(self, transcript: dict[str, Any]) -> tuple[bytes, int, str | None]:
        """A transcript's first bytes, its size and its pair token, remembered under the ETag they
        were read from."""
        cut = transcript["Size"] > LIST_TRANSCRIPT_BYTES  # a Range on an empty object would be refused
        response = s3.get_object(self.client, self.bucket.name, transcript["Key"],
                                 first_bytes=LIST_TRANSCRIPT_BYTES if cut else None)
        data = s3.read_body(response)
        size = int(response.get("ContentRange", "").rpartition("/")[2] or len(data))
        start = (data[:LIST_TRANSCRIPT_BYTES], size, response["Metadata"].get(PAIR_KEY))
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
                                lambda: self._overridden(name, files, ref_text, workdir, timings))
        if transcript is None:
            return self._single_flight(("transcribe", clip["Key"], clip["ETag"]),
                                       lambda: self._transcribed(name, clip, workdir, timings))
        return self._cached((clip["Key"], clip["ETag"], ("etag", transcript["ETag"])),
                            lambda: self._paired(name, files, workdir, timings))

    def _overridden(self, name: str, files: VoiceFiles, ref_text: str, workdir: Path, timings: Timings) -> Reference:
        """The clip with the job's ``ref_text``, or with the transcript of the part used if it was cut."""
        with timings.measure("fetch_voice"):
            local, metadata = self._download_clip(name, files.clip, workdir)
        clip = self._prepared(name, local, files.clip, timings)
        text = self._clip_text(name, files, metadata, clip, "ref_text", timings) if clip.clipped else ref_text
        return Reference(audio=with_tail(clip.wave), text=normalise_ref_text(text))

    def _paired(self, name: str, files: VoiceFiles, workdir: Path, timings: Timings) -> Reference:
        """The listed transcript and clip, which must belong together when the transcript says
        which clip it was stored with; a clip that was cut goes with a transcript of the part used."""
        transcript = files.transcript
        with timings.measure("fetch_voice"):
            response = self._get(transcript)
            data = s3.read_body(response)
            local, metadata = self._download_clip(name, files.clip, workdir, pair=response["Metadata"].get(PAIR_KEY))
        text = self._transcript_text(name, transcript["Key"], data)
        clip = self._prepared(name, local, files.clip, timings)
        if clip.clipped and not whispered(response["Metadata"].get(PAIR_KEY), files.clip):
            text = self._clip_text(name, files, metadata, clip, f"its transcript {transcript['Key']}", timings)
        return Reference(audio=with_tail(clip.wave), text=normalise_ref_text(text))

    def _prepared(self, name: str, local: Path, listed: dict[str, Any], timings: Timings) -> Clip:
        clip = self._clean(f"voice {name!r}", local, timings)
        with self._lock:
            self._durations[(listed["Key"], listed["ETag"])] = clip.source_s
        log.info("prepared voice %s from s3://%s/%s", name, self.bucket.name, listed["Key"])
        return clip

    def _clean(self, what: str, local: Path, timings: Timings) -> Clip:
        with timings.measure("prepare_reference"):
            try:
                return clean_reference_wave(local, self.limits.voice_max_seconds)
            except VoiceError as err:
                raise VoiceError(f"{what}: {err}") from None

    def _recognise(self, what: str, wave: torch.Tensor, timings: Timings) -> str:
        with timings.measure("transcribe_reference"):
            text = self.recognizer.transcribe(wave[0].numpy(), SAMPLE_RATE, timings)
        if not text:
            raise VoiceError(f"{what}: no speech was recognised in the {wave.shape[-1] / SAMPLE_RATE:.1f} s that "
                             "F5-TTS uses; upload a transcript")
        return text

    def _clip_text(self, name: str, files: VoiceFiles, metadata: dict[str, str], clip: Clip, transcript: str,
                   timings: Timings) -> str:
        """The transcript of the part of a cut clip that is used: ``<name>.clip.txt`` when it was
        made for this clip and this ``<name>.txt``, else Whisper's, stored there (replacing only the
        version listed) for every later job and worker. Without Whisper, the voice is refused."""
        if self.recognizer is None:
            raise VoiceError(too_long(f"voice {name!r}", clip.source_s, transcript,
                                      stored_voice_fixes(voice_stem(name))))
        stored, key = files.clip_transcript, f"{self.bucket.voices_prefix}{voice_stem(name)}{CLIP_TRANSCRIPT}"
        made_for = {PAIR_KEY: pair_token(metadata, files.clip["ETag"]),
                    OF_TRANSCRIPT_KEY: files.transcript["ETag"].strip('"') if files.transcript else "none"}
        if stored is not None:
            with timings.measure("fetch_voice"):
                response = self._get(stored)
                data = s3.read_body(response)
            if response["Metadata"] == made_for:
                return self._transcript_text(name, key, data)
        text = self._recognise(f"voice {name!r}", with_tail(clip.wave), timings)
        with timings.measure("store_transcript"):
            try:
                s3.put_text(self.client, self.bucket.name, key, text, metadata=made_for,
                            **({"if_match": stored["ETag"]} if stored is not None else {"create_only": True}))
            except s3.ObjectChanged:
                raise _Changed(f"{key} changed while the clip was transcribed") from None
        log.info("transcribed the %.1f s used of voice %s and stored s3://%s/%s: %r", len(clip.wave) / SAMPLE_RATE,
                 name, self.bucket.name, key, text)
        return text

    def _transcribed(self, name: str, clip: dict[str, Any], workdir: Path, timings: Timings) -> Reference:
        """Recognise the part of the clip that is used once and store it as ``<name>.txt`` beside
        the clip, create-only (a transcript that appeared meanwhile is kept and used instead), so
        that no job, on this worker or any other, recognises it again: later jobs read it like any
        transcript, and this worker's cache holds the reference under its ETag."""
        bucket, key = self.bucket.name, f"{self.bucket.voices_prefix}{voice_stem(name)}.txt"
        with timings.measure("fetch_voice"):
            local, metadata = self._download_clip(name, clip, workdir)
        if PAIR_KEY in metadata:
            raise _Changed(f"{clip['Key']} was stored with a transcript, and {key} is missing")
        wave = with_tail(self._prepared(name, local, clip, timings).wave)
        text = self._recognise(f"voice {name!r} has no transcript {key}", wave, timings)
        with timings.measure("store_transcript"):
            try:
                etag = s3.put_text(self.client, bucket, key, text, create_only=True,
                                   metadata={PAIR_KEY: pair_token(metadata, clip["ETag"])})
            except s3.ObjectChanged:
                raise _Changed(f"{key} appeared while the clip was transcribed") from None
        log.info("transcribed voice %s and stored s3://%s/%s: %r", name, bucket, key, text)
        reference = Reference(audio=wave, text=normalise_ref_text(text))
        return self._remember((clip["Key"], clip["ETag"], ("etag", etag)), reference)
