"""Validation of a job's ``input``: every field checked, errors name the field.

A job is one ``action`` (default ``synthesize``), parsed by its own function. Synthesis also
accepts OpenAI's ``/v1/audio/speech`` request shape, mapped onto the native fields.
"""

from __future__ import annotations

import base64
import binascii
import functools
import random
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from f5worker import ssml
from f5worker.formats import OUTPUT_FORMATS, STREAM_FORMATS, SUBTITLE_FORMATS, VOICE_EXTENSIONS, base64_length

MAX_TEXT_CHARS = 5000  # JobLimits' defaults; settings.Settings reads the endpoint's values
MAX_REF_TEXT_CHARS = 1000
MAX_TEXTS = 16
MAX_URL_CHARS = 2048
DEFAULT_VOICE = "default"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # an uploaded clip, before conversion (base64 or URL)
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# a voice asked for by its file name: exactly that object (``alice.wav``, ``Kurt_12s.WAV``)
VOICE_FILE = re.compile(rf"{VOICE_NAME.pattern}\.(?:{'|'.join(VOICE_EXTENSIONS)})", re.IGNORECASE)
SEED_MAX = 2**32 - 1
FIELD_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# field: (type, low, high) for every numeric synthesis parameter
NUMERIC_FIELDS: dict[str, tuple[type, float, float]] = {
    "speed": (float, 0.25, 4.0),
    "nfe_step": (int, 2, 128),
    "cfg_strength": (float, 0.0, 10.0),
    "sway_sampling_coef": (float, -1.0, 1.0),
    "cross_fade_duration": (float, 0.0, 2.0),
    "seed": (int, 0, SEED_MAX),
}
# verify: the retakes' fields, (type, low, high, default)
VERIFY_FIELDS: dict[str, tuple[type, float, float, float]] = {
    "max_attempts": (int, 1, 10, 3),
    "max_wer": (float, 0.0, 1.0, 0.1),
}
KNOWN_FIELDS = {"text", "texts", "voice", "ref_text", "ref_audio_base64", "ref_audio_url", "output_format",
                "remove_silence", "return_base64", "stream", "return_word_timings", "subtitles", "normalize", "verify",
                *NUMERIC_FIELDS, *VERIFY_FIELDS}
OPENAI_FIELDS = {"model", "input", "response_format"}
# OpenAI response_format -> native output_format; OpenAI's default is mp3
OPENAI_FORMATS = {"mp3": "mp3", "opus": "ogg", "flac": "flac", "wav": "wav", "pcm": "pcm"}
OPENAI_STREAM_FORMATS = ("audio", "sse")  # stream_format: the audio bytes, or server-sent events (HTTP mode)
ACTIONS = ("synthesize", "list_voices", "upload_voice", "delete_voice", "presign")
MAX_KEY_CHARS = 1024  # S3's limit on a key (in UTF-8 bytes; a presign key is ASCII)
# Fields of the earlier F5-TTS RunPod worker (sruckh/f5-tts-runpod-serverless) and what they are here.
EARLIER_FIELDS = {
    "local_voice": "voice (a voice name, or its file name such as 'Kurt_12s.wav')",
    "endpoint": "action (upload -> upload_voice, list_voices -> list_voices, download -> presign)",
    "timing_format": "subtitles (srt, vtt, ass, json or csv; word timings come with return_word_timings)",
    "timing_method": "nothing: word timings come from Whisper (ASR_ENABLED=1)",
    "voice_name": "name (without the extension)",
    "voice_file_url": "audio_url (with a transcript)",
    "job_id": "key: presign takes an output's key, such as outputs/<job id>.wav",
}


@dataclass(frozen=True)
class JobLimits:
    """What one job may ask for (``MAX_TEXT_CHARS``, ``MAX_TEXTS``, ``VOICE_MAX_BYTES``,
    ``VOICE_MAX_SECONDS``): these defaults, or the endpoint's values from ``settings.Settings``."""

    max_text_chars: int = MAX_TEXT_CHARS  # one text, and a ``texts`` list in all
    max_texts: int = MAX_TEXTS
    # A voice in the bucket: its size is checked against the listing before any download (and the
    # download is cut at the cap); its duration from the file's header, before decoding.
    voice_max_bytes: int = 50 * 1024 * 1024
    voice_max_seconds: float = 300.0  # only the first 12 s are used


DEFAULT_LIMITS = JobLimits()


@dataclass(frozen=True)
class SynthesisParams:
    nfe_step: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float = -1.0
    speed: float = 1.0
    cross_fade_duration: float = 0.15
    seed: int = 0


class InputError(ValueError):
    """Bad job input; ``str()`` is the message returned to the client."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"input.{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class SynthesisRequest:
    texts: tuple[str, ...]  # one entry unless the job gave ``texts``
    scripts: tuple[tuple[ssml.Part, ...], ...]  # each text as speech and pauses (ssml.parse)
    several: bool  # the job gave ``texts``: one output per text
    voice: str
    ref_text: str | None
    output_format: str
    params: SynthesisParams
    remove_silence: bool
    return_base64: bool
    stream: bool
    return_word_timings: bool
    subtitles: str | None  # a key of SUBTITLE_FORMATS
    normalize: bool  # numbers, dates, ... written out before chunking (f5worker.normalize)
    verify: bool  # each chunk recognised, and synthesized again while its WER is over max_wer
    max_attempts: int  # syntheses of one chunk at most, with verify
    max_wer: float
    ref_audio: bytes | None = None  # a reference for this job only: decoded ``ref_audio_base64``
    ref_audio_url: str | None = None  # or this https URL

    @property
    def needs_recognition(self) -> bool:
        return self.return_word_timings or self.subtitles is not None


@dataclass(frozen=True)
class ListVoicesRequest:
    pass


@dataclass(frozen=True)
class UploadVoiceRequest:
    name: str
    transcript: str
    audio: bytes | None  # decoded ``audio_base64``
    audio_url: str | None
    overwrite: bool


@dataclass(frozen=True)
class DeleteVoiceRequest:
    name: str


@dataclass(frozen=True)
class PresignRequest:
    key: str  # an existing output's key; the pipeline checks it is under OUTPUTS_PREFIX


JobRequest = SynthesisRequest | ListVoicesRequest | UploadVoiceRequest | DeleteVoiceRequest | PresignRequest


def parse_job(raw: Any, limits: JobLimits = DEFAULT_LIMITS) -> JobRequest:
    """The job's ``action`` (default ``synthesize``) and that action's fields."""
    if not isinstance(raw, dict):
        raise InputError("(root)", f"must be a JSON object, not {type(raw).__name__}")
    action = _text(raw, "action", 32, required=False) or "synthesize"
    if action not in ACTIONS:
        raise InputError("action", f"must be one of {', '.join(ACTIONS)}")
    fields = {k: v for k, v in raw.items() if k != "action"}
    parsers = {"synthesize": functools.partial(parse_request, limits=limits), "list_voices": parse_list_voices,
               "upload_voice": parse_upload_voice, "delete_voice": parse_delete_voice, "presign": parse_presign}
    return parsers[action](fields)


def parse_request(raw: dict[str, Any], limits: JobLimits = DEFAULT_LIMITS) -> SynthesisRequest:
    """A synthesis job, native or in OpenAI's speech request shape."""
    if OPENAI_FIELDS & raw.keys():
        raw = from_openai(raw, limits)
    _check_fields(raw, KNOWN_FIELDS)
    numbers = {name: _number(raw, name, *spec) for name, spec in NUMERIC_FIELDS.items() if name in raw}
    numbers.setdefault("seed", random.randint(0, SEED_MAX))
    output_format = _text(raw, "output_format", 8, required=False) or "wav"
    if output_format not in OUTPUT_FORMATS:
        raise InputError("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    subtitles = _text(raw, "subtitles", 8, required=False)
    if subtitles is not None and subtitles not in SUBTITLE_FORMATS:
        raise InputError("subtitles", f"must be one of {', '.join(SUBTITLE_FORMATS)}")
    return_word_timings = _flag(raw, "return_word_timings")
    several = "texts" in raw
    if several and "text" in raw:
        raise InputError("texts", "give text or texts, not both")
    texts = _texts(raw, limits) if several else (_text(raw, "text", limits.max_text_chars, required=True),)
    verify = _flag(raw, "verify")
    retakes = {name: _number(raw, name, *spec[:3]) if name in raw else spec[3] for name, spec in VERIFY_FIELDS.items()}
    if not verify and VERIFY_FIELDS.keys() & raw.keys():
        raise InputError(min(VERIFY_FIELDS.keys() & raw.keys()), "applies to retakes: it needs verify: true")
    ref_audio, ref_audio_url = _clip(raw, "ref_audio_base64", "ref_audio_url")
    if (ref_audio is not None or ref_audio_url is not None) and "voice" in raw:
        raise InputError("voice", "give a voice or a reference clip (ref_audio_base64 or ref_audio_url), not both")
    stream, remove_silence = _flag(raw, "stream"), _flag(raw, "remove_silence")
    if stream:
        if several:
            raise InputError("stream", "streams one text: send texts without stream, or one job per text")
        if output_format not in STREAM_FORMATS:
            raise InputError("output_format", f"a streamed job sends {' or '.join(STREAM_FORMATS)}")
        if remove_silence:
            raise InputError("remove_silence", "needs the whole audio, so it cannot be combined with stream")
        if return_word_timings or subtitles is not None:
            field = "return_word_timings" if return_word_timings else "subtitles"
            raise InputError(field, "needs the whole audio, so it cannot be combined with stream")
    scripts = _scripts(texts, several)
    if remove_silence and any(isinstance(part, ssml.Pause) for script in scripts for part in script):
        raise InputError("remove_silence", "would shorten the pauses the text asks for with <break>")
    return SynthesisRequest(
        texts=texts,
        scripts=scripts,
        several=several,
        voice=_voice(raw) or DEFAULT_VOICE,
        ref_text=_text(raw, "ref_text", MAX_REF_TEXT_CHARS, required=False),
        output_format=output_format,
        params=SynthesisParams(**numbers),
        remove_silence=remove_silence,
        return_base64=_flag(raw, "return_base64"),
        stream=stream,
        return_word_timings=return_word_timings,
        subtitles=subtitles,
        normalize=_flag(raw, "normalize", default=True),
        verify=verify,
        **retakes,
        ref_audio=ref_audio,
        ref_audio_url=ref_audio_url,
    )


def from_openai(raw: dict[str, Any], limits: JobLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """OpenAI's ``{"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"}``
    as native fields. ``model`` is checked to be a string and otherwise ignored: this worker serves one
    model. ``voice`` may be OpenAI's custom-voice object ``{"id": name}``. ``instructions`` cannot be
    honoured (F5-TTS speaks as its reference clip does), so one that is not empty is refused. A job
    (as opposed to the HTTP mode, which reads ``stream_format`` first) returns the audio in its result:
    ``stream_format`` may only be ``audio``."""
    native = dict(raw)
    _text(native, "model", 64, required=False)
    native.pop("model", None)
    if isinstance(native.get("voice"), dict):
        voice = native["voice"]
        if set(voice) != {"id"}:
            raise InputError("voice", 'must be a voice name or {"id": <voice name>}')
        native["voice"] = voice["id"]
    if native.get("instructions", "") != "":
        _text(native, "instructions", limits.max_text_chars, required=False)  # a string, or the error says what
        raise InputError("instructions", "cannot be honoured: F5-TTS speaks in the manner of the reference voice "
                                         "and takes no instructions; use a voice recorded in the style you want")
    native.pop("instructions", None)
    if pop_stream_format(native) == "sse":
        raise InputError("stream_format", "sse is served by the HTTP mode (WORKER_MODE=http); a job returns "
                                          "the audio in its result")
    if "input" in native:
        if "text" in native:
            raise InputError("input", "is OpenAI's name for text: give one of them")
        native["text"] = _text(native, "input", limits.max_text_chars, required=True)
        del native["input"]
    fmt = _text(native, "response_format", 8, required=False)
    native.pop("response_format", None)
    if fmt is not None:
        if "output_format" in native:
            raise InputError("response_format", "is OpenAI's name for output_format: give one of them")
        if fmt == "aac":
            raise InputError("response_format", "aac cannot be produced here (libsndfile has no AAC encoder): "
                                                f"use one of {', '.join(OPENAI_FORMATS)}")
        if fmt not in OPENAI_FORMATS:
            raise InputError("response_format", f"must be one of {', '.join(OPENAI_FORMATS)}")
    native.setdefault("output_format", OPENAI_FORMATS[fmt or "mp3"])
    return native


def pop_stream_format(raw: dict[str, Any]) -> str:
    """OpenAI's ``stream_format`` (taken out of ``raw``): ``audio`` (the default) or ``sse``."""
    value = _text(raw, "stream_format", 8, required=False) or "audio"
    raw.pop("stream_format", None)
    if value not in OPENAI_STREAM_FORMATS:
        raise InputError("stream_format", f"must be one of {', '.join(OPENAI_STREAM_FORMATS)}")
    return value


def parse_list_voices(raw: dict[str, Any]) -> ListVoicesRequest:
    _check_fields(raw, set())
    return ListVoicesRequest()


def parse_upload_voice(raw: dict[str, Any]) -> UploadVoiceRequest:
    _check_fields(raw, {"name", "transcript", "audio_base64", "audio_url", "overwrite"})
    name = _stored_voice_name(raw)
    transcript = _text(raw, "transcript", MAX_REF_TEXT_CHARS, required=True)
    if "audio_base64" not in raw and "audio_url" not in raw:
        raise InputError("audio_base64", "give the audio as audio_base64 or as audio_url (one of them)")
    audio, url = _clip(raw, "audio_base64", "audio_url")
    return UploadVoiceRequest(name=name, transcript=transcript, audio=audio, audio_url=url,
                              overwrite=_flag(raw, "overwrite"))


def parse_delete_voice(raw: dict[str, Any]) -> DeleteVoiceRequest:
    _check_fields(raw, {"name"})
    return DeleteVoiceRequest(name=_stored_voice_name(raw))


def parse_presign(raw: dict[str, Any]) -> PresignRequest:
    """``key``: a plain object key, no ``.``/``..`` segment, no empty one, nothing outside printable ASCII."""
    _check_fields(raw, {"key"})
    key = _text(raw, "key", MAX_KEY_CHARS, required=True)
    if not key.isascii() or not key.isprintable() or key.startswith("/") or {".", "..", ""} & set(key.split("/")):
        raise InputError("key", "must be an object key such as outputs/<job id>.wav (printable ASCII, no leading "
                                "'/', no empty, '.' or '..' segment)")
    return PresignRequest(key=key)


def _clip(raw: dict, base64_field: str, url_field: str) -> tuple[bytes | None, str | None]:
    """An audio clip given as base64 or as an https URL, at most one of them: ``(bytes, None)``,
    ``(None, url)``, or ``(None, None)`` when neither is given."""
    if base64_field in raw and url_field in raw:
        raise InputError(base64_field, f"give the audio as {base64_field} or as {url_field} (one of them)")
    if base64_field in raw:
        encoded = _text(raw, base64_field, base64_length(MAX_UPLOAD_BYTES), required=True)
        try:
            return base64.b64decode(encoded, validate=True), None
        except (binascii.Error, ValueError):
            raise InputError(base64_field, "is not valid base64") from None
    if url_field in raw:
        url = _text(raw, url_field, MAX_URL_CHARS, required=True)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise InputError(url_field, "must be an https:// URL")
        return None, url
    return None, None


def _check_fields(raw: dict, known: set[str]) -> None:
    unknown = sorted(_printable(k) for k in raw if k not in known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        earlier = EARLIER_FIELDS.get(unknown[0])
        hint = (f"; {unknown[0]} is the earlier F5-TTS RunPod worker's field, here: {earlier} "
                "(README: Coming from the earlier project)") if earlier else ""
        raise InputError(unknown[0], f"unknown field (accepted: {accepted}){hint}")


def _voice_name(raw: dict, name: str, required: bool) -> str | None:
    value = _text(raw, name, 64, required=required)
    if value is not None and not VOICE_NAME.fullmatch(value):
        raise InputError(name, "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    return value


def _voice(raw: dict) -> str | None:
    """``voice``: a voice's name, or the file name of one of its clips."""
    value = _text(raw, "voice", 64 + 1 + max(map(len, VOICE_EXTENSIONS)), required=False)
    if value is not None and not (VOICE_NAME.fullmatch(value) or VOICE_FILE.fullmatch(value)):
        raise InputError("voice", "must be a voice name (1-64 letters, digits, '-' or '_', starting with a letter or "
                                  f"digit) or its file name <name>.<{'|'.join(VOICE_EXTENSIONS)}>")
    return value


def voice_stem(voice: str) -> str:
    """The voice name in ``voice`` (a name, or a file name ``<name>.<ext>``)."""
    return voice.partition(".")[0]


def _stored_voice_name(raw: dict) -> str:
    name = _voice_name(raw, "name", required=True)
    if name == DEFAULT_VOICE:
        raise InputError("name", f"{DEFAULT_VOICE!r} is the built-in voice and cannot be changed")
    return name


def _texts(raw: dict, limits: JobLimits) -> tuple[str, ...]:
    value, max_chars = raw["texts"], limits.max_text_chars
    if not isinstance(value, list) or not value:
        raise InputError("texts", "must be a non-empty list of strings")
    if len(value) > limits.max_texts:
        raise InputError("texts", f"has {len(value)} entries, over the limit of {limits.max_texts}")
    texts = tuple(_text({f"texts[{i}]": v}, f"texts[{i}]", max_chars, required=True) for i, v in enumerate(value))
    total = sum(len(t) for t in texts)
    if total > max_chars:
        raise InputError("texts", f"are {total} characters together, over the limit of {max_chars}")
    return texts


def _scripts(texts: tuple[str, ...], several: bool) -> tuple[tuple[ssml.Part, ...], ...]:
    """Every text as speech and pauses; unreadable markup, a text of pauses alone or too long a
    silence is an error of that text."""
    scripts = []
    for index, text in enumerate(texts):
        field = f"texts[{index}]" if several else "text"
        try:
            script = ssml.parse(text)
        except ssml.MarkupError as err:
            raise InputError(field, str(err)) from None
        speech = ssml.speech(script)
        if len(speech) < len(script) and not any(map(ssml.has_words, speech)):
            raise InputError(field, "has nothing to speak, only pauses")
        scripts.append(script)
    total = sum(map(ssml.pause_seconds, scripts))
    if total > ssml.MAX_PAUSES_S:
        raise InputError("texts" if several else "text",
                         f"asks for {total:g} s of pauses, over the limit of {ssml.MAX_PAUSES_S:g} s in all")
    return tuple(scripts)


def _printable(key: object) -> str:
    """An unknown field's name as it can be echoed in an error: plain names as they are, anything
    else (non-strings, control characters, lone surrogates, megabyte keys) escaped and cut short."""
    if isinstance(key, str) and FIELD_NAME.fullmatch(key):
        return key
    return ascii(key)[:66]


def _text(raw: dict, name: str, max_chars: int, required: bool) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise InputError(name, "is required")
        return None
    if not isinstance(value, str):
        raise InputError(name, f"must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(name, "is not valid UTF-8 (lone surrogate)") from None
    if "\x00" in value:
        raise InputError(name, "contains a NUL character")
    if not value.strip():
        raise InputError(name, "is empty")
    if len(value) > max_chars:
        raise InputError(name, f"is {len(value)} characters, over the limit of {max_chars}")
    return value


def _number(raw: dict, name: str, kind: type, low: float, high: float) -> int | float:
    value = raw[name]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind is int and not is_int:
        raise InputError(name, f"must be an integer, not {type(value).__name__}")
    if kind is float and not (is_int or isinstance(value, float)):
        raise InputError(name, f"must be a number, not {type(value).__name__}")
    if not low <= value <= high:  # also rejects NaN and infinities
        raise InputError(name, f"must be between {low:g} and {high:g}")
    return kind(value)


def _flag(raw: dict, name: str, default: bool = False) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise InputError(name, f"must be true or false, not {type(value).__name__}")
    return value
