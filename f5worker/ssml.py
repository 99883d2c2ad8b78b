"""Pauses in a job's text: SSML's ``<break time="500ms"/>`` or ``<break time="1.5s"/>``.

A text is read as speech between pauses (``parse``). Any other markup, or a break we cannot read
(no ``time``, another attribute, another unit, an unclosed tag), is refused as an input error
rather than spoken: a tag is ``<`` followed by a letter, ``/``, ``!`` or ``?``, so "a < b" is
still text. One pause is at most ``MAX_PAUSE_S``; a job's pauses together at most ``MAX_PAUSES_S``.
Torch-free, like ``contract``, which calls it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_PAUSE_S = 10.0  # as Amazon Polly and Google Cloud TTS cap one break
MAX_PAUSES_S = 60.0
BREAK = re.compile(r"""<break\s+time\s*=\s*(["'])\s*(\d{1,6}(?:\.\d{1,3})?)\s*(ms|s)\s*\1\s*/>""", re.IGNORECASE)
TAG_START = re.compile(r"<[A-Za-z/!?]")
WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Pause:
    seconds: float


Part = str | Pause  # speech, or silence


class MarkupError(ValueError):
    """The text holds markup we cannot read; ``str()`` says where."""


def parse(text: str) -> tuple[Part, ...]:
    """``text`` as speech and pauses in order; adjacent pauses are added up. Speech with no word in
    it (the full stop after a break) is dropped where the text has words elsewhere."""
    parts: list[Part] = []
    start = 0
    for match in BREAK.finditer(text):
        _speech(parts, text[start:match.start()])
        value, unit = float(match[2]), match[3].lower()
        seconds = value / 1000 if unit == "ms" else value
        if seconds > MAX_PAUSE_S:
            raise MarkupError(f"{match[0]!r} is over the limit of {MAX_PAUSE_S:g} s for one pause")
        if parts and isinstance(parts[-1], Pause):
            seconds += parts.pop().seconds
        parts.append(Pause(seconds))
        start = match.end()
    _speech(parts, text[start:])
    if any(map(has_words, speech(parts))):
        parts = [part for part in parts if isinstance(part, Pause) or has_words(part)]
    return tuple(parts)


def has_words(text: str) -> bool:
    return WORD.search(text) is not None


def _speech(parts: list[Part], text: str) -> None:
    if (tag := TAG_START.search(text)) is not None:
        snippet = text[tag.start():]
        snippet = repr(snippet if len(snippet) <= 40 else snippet[:40] + "...")
        raise MarkupError(f"markup {snippet} cannot be read: the only tag understood is "
                          '<break time="500ms"/> (or time="1.5s")')
    if text.strip():
        parts.append(text)


def speech(parts: Sequence[Part]) -> list[str]:
    return [part for part in parts if isinstance(part, str)]


def pause_seconds(parts: Sequence[Part]) -> float:
    return sum(part.seconds for part in parts if isinstance(part, Pause))


def spoken_text(parts: Sequence[Part]) -> str:
    """The speech of ``parts`` joined by single spaces (what ``normalized_text`` reports)."""
    return " ".join(part.strip() for part in speech(parts))
