"""SubRip (``.srt``) and WebVTT (``.vtt``) subtitles from word timings: pure functions, no I/O."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from f5worker.asr import Word

MAX_CUE_CHARS = 42  # the usual broadcast line length
MAX_CUE_S = 6.0
SENTENCE_END = (".", "!", "?", "。", "！", "？")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def group_cues(words: Sequence[Word], max_chars: int = MAX_CUE_CHARS, max_s: float = MAX_CUE_S) -> list[Cue]:
    """Consecutive words joined into cues of at most ``max_chars`` characters and ``max_s``
    seconds (a single longer word gets a cue of its own), closing a cue after a sentence's end."""
    cues: list[Cue] = []
    group: list[Word] = []

    def close() -> None:
        if group:
            # one line per cue: a newline or an arrow inside a word would end the cue or fake a timing line
            text = " ".join(" ".join(w.word for w in group).split()).replace("-->", "->")
            cues.append(Cue(group[0].start, group[-1].end, text))
            group.clear()

    for word in words:
        if group and (len(" ".join(w.word for w in (*group, word))) > max_chars or word.end - group[0].start > max_s):
            close()
        group.append(word)
        if word.word.endswith(SENTENCE_END):
            close()
    close()
    return cues


def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(words: Sequence[Word]) -> str:
    return "".join(
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n\n"
        for i, c in enumerate(group_cues(words), 1)
    )


def to_vtt(words: Sequence[Word]) -> str:
    cues = "".join(
        f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{html.escape(c.text, quote=False)}\n\n"
        for c in group_cues(words)
    )
    return f"WEBVTT\n\n{cues}"


def render(words: Sequence[Word], fmt: str) -> str:
    """``words`` as subtitles in ``fmt`` (a key of ``SUBTITLE_FORMATS``)."""
    return {"srt": to_srt, "vtt": to_vtt}[fmt](words)
