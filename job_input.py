"""Validation of a synthesis job's ``input``: every field checked, errors name the field."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any

from audio import OUTPUT_FORMATS
from tts_model import SynthesisParams
from voices import DEFAULT_VOICE

MAX_TEXT_CHARS = int(os.environ.get("MAX_TEXT_CHARS", "5000"))
MAX_REF_TEXT_CHARS = 1000
SEED_MAX = 2**32 - 1
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
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
KNOWN_FIELDS = {"text", "voice", "ref_text", "output_format", "remove_silence", "return_base64", *NUMERIC_FIELDS}


class InputError(ValueError):
    """Bad job input; ``str()`` is the message returned to the client."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"input.{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: str
    ref_text: str | None
    output_format: str
    params: SynthesisParams
    remove_silence: bool
    return_base64: bool


def parse_request(raw: Any) -> SynthesisRequest:
    if not isinstance(raw, dict):
        raise InputError("(root)", f"must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(_printable(k) for k in raw if k not in KNOWN_FIELDS)
    if unknown:
        raise InputError(unknown[0], f"unknown field (accepted: {', '.join(sorted(KNOWN_FIELDS))})")
    numbers = {name: _number(raw, name, *spec) for name, spec in NUMERIC_FIELDS.items() if name in raw}
    numbers.setdefault("seed", random.randint(0, SEED_MAX))
    voice = _text(raw, "voice", 64, required=False) or DEFAULT_VOICE
    if not VOICE_NAME.fullmatch(voice):
        raise InputError("voice", "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    output_format = _text(raw, "output_format", 8, required=False) or "wav"
    if output_format not in OUTPUT_FORMATS:
        raise InputError("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    return SynthesisRequest(
        text=_text(raw, "text", MAX_TEXT_CHARS, required=True),
        voice=voice,
        ref_text=_text(raw, "ref_text", MAX_REF_TEXT_CHARS, required=False),
        output_format=output_format,
        params=SynthesisParams(**numbers),
        remove_silence=_flag(raw, "remove_silence"),
        return_base64=_flag(raw, "return_base64"),
    )


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
