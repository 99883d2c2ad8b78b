"""Subtitle files from word timings: SubRip (``.srt``), WebVTT (``.vtt``) and Advanced SubStation
Alpha (``.ass``, each word timed for karaoke) written by pysubs2, and the words themselves as
JSON or CSV. Pure functions, no I/O."""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pysubs2

from f5worker.asr import Word

MAX_CUE_CHARS = 42  # the usual broadcast line length
MAX_CUE_S = 6.0
SENTENCE_END = (".", "!", "?", "。", "！", "？")
# ASS has no escape for its override-block braces nor its backslash: in a karaoke line they are
# shown as their full-width forms.
ASS_LOOKALIKES = str.maketrans({"{": "｛", "}": "｝", "\\": "＼"})


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


def group_cues(words: Sequence[Word], max_chars: int = MAX_CUE_CHARS, max_s: float = MAX_CUE_S) -> list[Cue]:
    """Consecutive words joined into cues of at most ``max_chars`` characters and ``max_s``
    seconds (a single longer word gets a cue of its own), closing a cue after a sentence's end."""
    cues: list[Cue] = []
    group: list[Word] = []

    def close() -> None:
        if group:
            # one line per cue: a newline or an arrow inside a word would end the cue or fake a timing line
            text = " ".join(" ".join(w.word for w in group).split()).replace("-->", "->")
            cues.append(Cue(group[0].start, group[-1].end, text, tuple(group)))
            group.clear()

    for word in words:
        if group and (len(" ".join(w.word for w in (*group, word))) > max_chars or word.end - group[0].start > max_s):
            close()
        group.append(word)
        if word.word.endswith(SENTENCE_END):
            close()
    close()
    return cues


def _centiseconds(seconds: float) -> int:
    return round(seconds * 100)


def _written(cues: Sequence[Cue], fmt: str, text: Callable[[Cue], str], **options: object) -> str:
    """``cues`` as pysubs2 writes ``fmt``, each with ``text(cue)``. pysubs2 reads ``\\N``, ``\\n``
    and ``\\h`` in any event's text as ASS line breaks and spaces, so for srt and vtt every
    backslash goes in as a character the texts lack and is put back afterwards."""
    texts = [text(cue) for cue in cues]
    marker = next(c for c in map(chr, itertools.count(0xE000)) if not any(c in t for t in texts))
    subs = pysubs2.SSAFile()
    subs.events = [pysubs2.SSAEvent(start=round(cue.start * 1000), end=round(cue.end * 1000),
                                    text=t if fmt == "ass" else t.replace("\\", marker))
                   for cue, t in zip(cues, texts, strict=True)]
    written = subs.to_string(fmt, **options)
    return written if fmt == "ass" else written.replace(marker, "\\")


def to_srt(words: Sequence[Word]) -> str:
    return _written(group_cues(words), "srt", lambda cue: cue.text, keep_ssa_tags=True)


def to_vtt(words: Sequence[Word]) -> str:
    return _written(group_cues(words), "vtt", lambda cue: html.escape(cue.text, quote=False), keep_ssa_tags=True)


def karaoke_line(cue: Cue) -> str:
    """The cue's words, each after a ``{\\k<centiseconds>}`` tag that lasts until the next word
    starts (the last, until the cue ends): the tags of a line add up to its length in ASS's
    centiseconds."""
    bounds = [_centiseconds(cue.start), *(_centiseconds(w.start) for w in cue.words[1:]), _centiseconds(cue.end)]
    return " ".join(f"{{\\k{end - start}}}{' '.join(w.word.split()).translate(ASS_LOOKALIKES)}"
                    for w, start, end in zip(cue.words, bounds, bounds[1:], strict=False))


def to_ass(words: Sequence[Word]) -> str:
    """One karaoke line per cue, its times on ASS's centisecond grid (as the ``\\k`` tags)."""
    cues = [Cue(_centiseconds(c.start) / 100, _centiseconds(c.end) / 100, c.text, c.words) for c in group_cues(words)]
    return _written(cues, "ass", karaoke_line)


def to_json(words: Sequence[Word]) -> str:
    """``[{"word", "start", "end"}, ...]``, as the job's ``words``."""
    return json.dumps([asdict(w) for w in words], ensure_ascii=False)


def to_csv(words: Sequence[Word]) -> str:
    """A ``word,start,end`` header, then one row per word (RFC 4180 quoting)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("word", "start", "end"))
    writer.writerows((w.word, w.start, w.end) for w in words)
    return out.getvalue()


def render(words: Sequence[Word], fmt: str) -> str:
    """``words`` as ``fmt`` (a key of ``SUBTITLE_FORMATS``)."""
    return {"srt": to_srt, "vtt": to_vtt, "ass": to_ass, "json": to_json, "csv": to_csv}[fmt](words)
