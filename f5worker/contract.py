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

from f5worker.formats import OUTPUT_FORMATS, STREAM_FORMATS, SUBTITLE_FORMATS, base64_length

MAX_TEXT_CHARS = 5000  # JobLimits' defaults; settings.Settings reads the endpoint's values
MAX_REF_TEXT_CHARS = 1000
MAX_TEXTS = 16
MAX_URL_CHARS = 2048
DEFAULT_VOICE = "default"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # an uploaded clip, before conversion (base64 or URL)
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
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
KNOWN_FIELDS = {"text", "texts", "voice", "ref_text", "output_format", "remove_silence", "return_base64", "stream",
                "return_word_timings", "subtitles", *NUMERIC_FIELDS}
OPENAI_FIELDS = {"model", "input", "response_format"}
# OpenAI response_format -> native output_format; OpenAI's default is mp3
OPENAI_FORMATS = {"mp3": "mp3", "opus": "ogg", "flac": "flac", "wav": "wav", "pcm": "pcm"}
OPENAI_STREAM_FORMATS = ("audio", "sse")  # stream_format: the audio bytes, or server-sent events (HTTP mode)
ACTIONS = ("synthesize", "list_voices", "upload_voice", "delete_voice")


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


JobRequest = SynthesisRequest | ListVoicesRequest | UploadVoiceRequest | DeleteVoiceRequest


def parse_job(raw: Any, limits: JobLimits = DEFAULT_LIMITS) -> JobRequest:
    """The job's ``action`` (default ``synthesize``) and that action's fields."""
    if not isinstance(raw, dict):
        raise InputError("(root)", f"must be a JSON object, not {type(raw).__name__}")
    action = _text(raw, "action", 32, required=False) or "synthesize"
    if action not in ACTIONS:
        raise InputError("action", f"must be one of {', '.join(ACTIONS)}")
    fields = {k: v for k, v in raw.items() if k != "action"}
    parsers = {"synthesize": functools.partial(parse_request, limits=limits), "list_voices": parse_list_voices,
               "upload_voice": parse_upload_voice, "delete_voice": parse_delete_voice}
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
    return SynthesisRequest(
        texts=texts,
        several=several,
        voice=_voice_name(raw, "voice", required=False) or DEFAULT_VOICE,
        ref_text=_text(raw, "ref_text", MAX_REF_TEXT_CHARS, required=False),
        output_format=output_format,
        params=SynthesisParams(**numbers),
        remove_silence=remove_silence,
        return_base64=_flag(raw, "return_base64"),
        stream=stream,
        return_word_timings=return_word_timings,
        subtitles=subtitles,
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
    if ("audio_base64" in raw) == ("audio_url" in raw):
        raise InputError("audio_base64", "give the audio as audio_base64 or as audio_url (one of them)")
    audio = url = None
    if "audio_base64" in raw:
        encoded = _text(raw, "audio_base64", base64_length(MAX_UPLOAD_BYTES), required=True)
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("audio_base64", "is not valid base64") from None
    else:
        url = _text(raw, "audio_url", MAX_URL_CHARS, required=True)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise InputError("audio_url", "must be an https:// URL")
    return UploadVoiceRequest(name=name, transcript=transcript, audio=audio, audio_url=url,
                              overwrite=_flag(raw, "overwrite"))


def parse_delete_voice(raw: dict[str, Any]) -> DeleteVoiceRequest:
    _check_fields(raw, {"name"})
    return DeleteVoiceRequest(name=_stored_voice_name(raw))


def _check_fields(raw: dict, known: set[str]) -> None:
    unknown = sorted(_printable(k) for k in raw if k not in known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise InputError(unknown[0], f"unknown field (accepted: {accepted})")


def _voice_name(raw: dict, name: str, required: bool) -> str | None:
    value = _text(raw, name, 64, required=required)
    if value is not None and not VOICE_NAME.fullmatch(value):
        raise InputError(name, "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    return value


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


def _flag(raw: dict, name: str) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise InputError(name, f"must be true or false, not {type(value).__name__}")
    return value
