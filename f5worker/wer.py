"""What was said against what was asked: word error rates (jiwer) and word timings moved onto
the text that was spoken.

Both sides are compared as tokens: lower-case words (letters, digits and inner apostrophes) and
single Han characters, so Chinese is scored by character and English by word. Punctuation and
spacing never count. ``jiwer`` (~0.1 s to import) is imported on first use, not at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import regex

from f5worker.asr import Word

TOKEN = regex.compile(r"\p{Han}|[[\p{L}\p{N}\p{M}]--\p{Han}]+(?:'[[\p{L}\p{N}\p{M}]--\p{Han}]+)*", regex.V1)
# a word as the result shows it: a Han character with the punctuation after it, or a run of non-space
UNIT = regex.compile(r"\p{Han}[^\s\p{Han}\p{L}\p{N}]*|[^\s\p{Han}]+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.replace("\u2019", "'").lower())


@dataclass(frozen=True)
class Score:
    errors: int  # substitutions + deletions + insertions
    words: int  # tokens in the reference

    @property
    def wer(self) -> float:
        """Errors per reference token; with no reference token, 0 if nothing was heard either, else 1."""
        if self.words == 0:
            return float(self.errors > 0)
        return self.errors / self.words


def score(reference: str, hypothesis: str) -> Score:
    import jiwer

    ref, hyp = tokens(reference), tokens(hypothesis)
    if not ref or not hyp:
        return Score(len(hyp) if not ref else len(ref), len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Score(out.substitutions + out.deletions + out.insertions, len(ref))


def total(scores: Sequence[Score]) -> Score:
    return Score(sum(s.errors for s in scores), sum(s.words for s in scores))


def retime(spoken: str, heard: Sequence[Word], heard_spoken: Sequence[str], duration_s: float) -> list[Word]:
    """The words of ``spoken`` (the text the audio was made from) with times from ``heard`` (the
    recogniser's words; ``heard_spoken[i]`` is ``heard[i]``'s text as it would be spoken, normalised).

    The two token sequences are aligned (jiwer); a spoken token matched or substituted takes the
    time of the heard token it is aligned with (a heard word's span shared evenly among its
    tokens); tokens left unheard share the gap between their timed neighbours evenly. A word's
    time spans its tokens'; a word with no token (a dash) takes its neighbours' boundary.
    """
    import jiwer

    units = UNIT.findall(spoken)
    unit_tokens = [tokens(unit) for unit in units]
    ref = [t for ts in unit_tokens for t in ts]
    spans: list[tuple[float, float] | None] = [None] * len(ref)
    hyp: list[str] = []
    hyp_spans: list[tuple[float, float]] = []
    for word, text in zip(heard, heard_spoken, strict=True):
        parts = tokens(text)
        step = (word.end - word.start) / max(1, len(parts))
        hyp += parts
        hyp_spans += [(word.start + i * step, word.start + (i + 1) * step) for i in range(len(parts))]
    if ref and hyp:
        for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
            if chunk.type in ("equal", "substitute"):
                for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
                    spans[chunk.ref_start_idx + offset] = hyp_spans[chunk.hyp_start_idx + offset]
    _interpolate(spans, duration_s)
    words, index, previous_end = [], 0, 0.0
    for unit, ts in zip(units, unit_tokens, strict=True):
        mine = spans[index:index + len(ts)]
        index += len(ts)
        start, end = (mine[0][0], mine[-1][1]) if mine else (previous_end, previous_end)
        start = min(max(start, previous_end), duration_s)
        end = min(max(end, start), duration_s)
        words.append(Word(unit, round(start, 3), round(end, 3)))
        previous_end = end
    return words


def _interpolate(spans: list[tuple[float, float] | None], duration_s: float) -> None:
    """Fill each run of untimed tokens evenly between the end of the timed token before it (or 0)
    and the start of the one after it (or ``duration_s``)."""
    index = 0
    while index < len(spans):
        if spans[index] is not None:
            index += 1
            continue
        end = index
        while end < len(spans) and spans[end] is None:
            end += 1
        low = spans[index - 1][1] if index else 0.0
        high = spans[end][0] if end < len(spans) else duration_s
        high = max(high, low)
        step = (high - low) / (end - index)
        for i in range(index, end):
            spans[i] = (low + (i - index) * step, low + (i - index + 1) * step)
        index = end
