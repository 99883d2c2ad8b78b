"""Text cut into chunks the model can take one at a time.

Upstream's ``utils_infer.chunk_text`` splits only after ``;:,.!?`` and whitespace, or after
full-width punctuation, and packs those sentences into chunks of at most a byte budget set by the
reference's speaking rate. A sentence over the budget stays whole, so text without punctuation
is one chunk of any length: over 22 s of context it is spoken badly, and once the mel length
upstream estimates for it passes the DiT's precomputed text positions (8192 frames, ~87 s) the
model fails with a tensor size mismatch.

Here a sentence over the budget is cut further: at whitespace, then between words (rjieba, the
segmenter upstream uses for Chinese), then between grapheme clusters, then between code points,
and the pieces are packed as upstream packs sentences. Text whose sentences all fit the budget
gets upstream's chunks. Every chunk is then checked against upstream's estimate of its length
(``Budget.problem``); where even the smallest piece cannot fit, the job is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate

import regex
import rjieba

from f5worker.contract import InputError
from f5worker.formats import SAMPLE_RATE

MAX_CONTEXT_S = 22.0  # upstream's budget of reference + generated seconds per chunk
HOP_LENGTH = 256  # samples per mel frame (upstream's ``hop_length``)
# upstream's infer_batch_process speaks a chunk under SHORT_TEXT_BYTES at SHORT_TEXT_SPEED, whatever ``speed``
SHORT_TEXT_BYTES = 10
SHORT_TEXT_SPEED = 0.3
SENTENCE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")  # upstream's chunk_text
WORD = re.compile(r"(\s*\S+)(\s*)")
GRAPHEME = regex.compile(r"\X")

# A piece of text and what follows it when the next piece lands in the same chunk.
Piece = tuple[str, str]


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def max_text_tokens(text: str) -> int:
    """An upper bound of the tokens ``convert_char_to_pinyin`` makes of ``text``: at most one per
    byte, plus the space it puts before a run of two or more ASCII characters (1.5 per byte)."""
    return 3 * nbytes(text) // 2


@dataclass(frozen=True)
class Budget:
    """What one chunk may hold with a reference of ``ref_s`` seconds transcribed as ``ref_text``.

    ``max_positions``: the length of the model's text position table (the DiT's
    ``precompute_max_pos``), None for a model without one.
    """

    ref_s: float
    ref_text: str
    speed: float
    max_positions: int | None = None

    @property
    def model_ref_text(self) -> str:
        """The transcript as upstream's ``infer_batch_process`` passes it: a space added after a 1-byte end."""
        return self.ref_text + " " if nbytes(self.ref_text[-1]) == 1 else self.ref_text

    @property
    def max_bytes(self) -> int:
        """Upstream's budget (``infer_process``: the reference's bytes per second over what is left
        of the context), capped so that the reference's and the chunk's text fit the positions."""
        rate = nbytes(self.ref_text) / self.ref_s
        budget = max(1, int(rate * (MAX_CONTEXT_S - self.ref_s) * self.speed))
        if self.max_positions is None:
            return budget
        return max(1, min(budget, (2 * self.max_positions - 1) // 3 - nbytes(self.model_ref_text)))

    def frames(self, chunk: str) -> int:
        """The mel length upstream's ``infer_batch_process`` generates for ``chunk``: the reference's
        frames plus the chunk's bytes at the reference's frames per byte, over the speed."""
        ref_frames = round(self.ref_s * SAMPLE_RATE) // HOP_LENGTH
        chunk_bytes = nbytes(chunk)
        speed = SHORT_TEXT_SPEED if chunk_bytes < SHORT_TEXT_BYTES else self.speed
        return ref_frames + int(ref_frames / nbytes(self.model_ref_text) * chunk_bytes / speed)

    def problem(self, chunk: str) -> str | None:
        """Why the model cannot take ``chunk`` with this reference, or None when it can."""
        seconds = self.frames(chunk) * HOP_LENGTH / SAMPLE_RATE
        if seconds > MAX_CONTEXT_S:
            return (f"{shorten(chunk)} would need {seconds:.1f} s of context with this voice's {self.ref_s:.1f} s "
                    f"reference (transcript of {nbytes(self.ref_text)} bytes), over the model's {MAX_CONTEXT_S:g} s: "
                    "the transcript is too short for the clip; give the clip's whole transcript as ref_text")
        tokens = max_text_tokens(self.model_ref_text + chunk)
        if self.max_positions is not None and max(tokens + 1, self.frames(chunk)) > self.max_positions:
            return (f"{shorten(chunk)} with this voice's transcript ({nbytes(self.ref_text)} bytes) may need "
                    f"{tokens + 1} text positions, over the model's {self.max_positions}: "
                    "give a shorter transcript of the reference clip as ref_text")
        return None


def shorten(chunk: str, limit: int = 40) -> str:
    return repr(chunk if len(chunk) <= limit else chunk[:limit] + "...")


def plan(text: str, budget: Budget) -> list[str]:
    """``text`` in chunks that each fit ``budget``; InputError where one cannot."""
    chunks = pack(pieces(text, budget.max_bytes), budget.max_bytes)
    for chunk in chunks:
        if (why := budget.problem(chunk)) is not None:
            raise InputError("text", f"cannot be cut into chunks the model can take: {why}")
    return chunks


def sentences(text: str) -> list[Piece]:
    """Upstream's sentences, each followed by a space when it ends in a 1-byte character."""
    return [(s, " " if nbytes(s[-1]) == 1 else "") for s in SENTENCE_END.split(text) if s]


def whitespace_split(text: str) -> list[Piece]:
    return [(m[1], m[2]) for m in WORD.finditer(text)]


def word_split(text: str) -> list[Piece]:
    """rjieba's words, merged where a boundary would fall inside a grapheme cluster (rjieba cuts Thai
    vowel marks from their consonants)."""
    graphemes = set(accumulate(map(len, GRAPHEME.findall(text))))
    words, start, end = [], 0, 0
    for segment in rjieba.cut(text):
        end += len(segment)
        if end in graphemes:
            words.append((text[start:end], ""))
            start = end
    return words


def grapheme_split(text: str) -> list[Piece]:
    return [(g, "") for g in GRAPHEME.findall(text)]


def code_point_split(text: str) -> list[Piece]:
    return [(c, "") for c in text]


SPLITTERS: tuple[Callable[[str], list[Piece]], ...] = (whitespace_split, word_split, grapheme_split, code_point_split)


def pieces(text: str, max_bytes: int) -> Iterator[Piece]:
    """Upstream's sentences, those over ``max_bytes`` cut finer (``refine``)."""
    for sentence, glue in sentences(text):
        yield from refine(sentence, glue, max_bytes)


def refine(text: str, glue: str, max_bytes: int, level: int = 0) -> Iterator[Piece]:
    """``text`` as it is if it fits ``max_bytes``, else cut by ``SPLITTERS[level]`` and each part
    refined with the next splitter; the last part keeps ``glue``. Whitespace is never cut."""
    if nbytes(text) <= max_bytes or level == len(SPLITTERS) or text.isspace():
        yield text, glue
        return
    parts = SPLITTERS[level](text)
    for index, (part, part_glue) in enumerate(parts, start=1):
        yield from refine(part, part_glue + glue if index == len(parts) else part_glue, max_bytes, level + 1)


def pack(parts: Iterator[Piece], max_bytes: int) -> list[str]:
    """Upstream's packing (``chunk_text``): a piece joins the current chunk while the chunk's bytes
    so far (with the glue) plus the piece's stay within ``max_bytes``. Chunks are stripped; empty
    ones (whitespace) are dropped."""
    chunks: list[str] = []
    current, size = "", 0
    for text, glue in parts:
        if not text:
            continue
        if current and size + nbytes(text) > max_bytes:
            chunks.append(current.strip())
            current, size = "", 0
        current += text + glue
        size += nbytes(text + glue)
    if current:
        chunks.append(current.strip())
    return [chunk for chunk in chunks if chunk]
