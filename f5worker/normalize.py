"""Text normalisation before chunking: numbers, ordinals, money, percentages, dates, times, units
and common abbreviations written out as they are spoken ("$5.50" -> "five point five dollars",
"3月4日" -> "三月四日"), in English and in Chinese, F5-TTS's languages.

The grammars are WeTextProcessing's, run by ``wetext``, WeTextProcessing's runtime: its wheel
ships them compiled (OpenFst graphs, read with kaldifst), so nothing is compiled here, at
provisioning or in the image build, and pynini (a 165 MB wheel, ~700 MB installed, which
WeTextProcessing and NeMo need to build grammars) is not installed. Importing ``wetext`` reads
the graphs (~0.8 s): once per process, on the first job that normalises (``load_normalizer`` in
its ``timings_ms``) or in the warm-up, never at start.

Each sentence goes through the grammar of its script: Chinese where it holds a Han character,
English otherwise. The graphs' cost grows faster than the text past a few hundred characters,
so a longer sentence is cut at whitespace first (``MAX_PIECE_CHARS``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import regex

from f5worker.timings import Timings

log = logging.getLogger(__name__)

MAX_PIECE_CHARS = 400
# after a sentence's end (and the whitespace that follows it); full-width marks need no space
SENTENCE_END = regex.compile(r"(?<=[.!?;…])\s+|(?<=[。！？；])\s*")
HAN = regex.compile(r"\p{Han}")
EDGES = regex.compile(r"(\s*)(.*?)(\s*)", regex.DOTALL)

Grammar = Callable[[str], str]


def language(sentence: str) -> str:
    """``zh`` where the sentence holds a Han character, else ``en``."""
    return "zh" if HAN.search(sentence) else "en"


def pieces(text: str) -> Iterator[str]:
    """``text`` cut after each sentence end, and at whitespace (else anywhere) into pieces of at most
    ``MAX_PIECE_CHARS``; the pieces, whitespace included, add up to ``text``."""
    start = 0
    for match in SENTENCE_END.finditer(text):
        if match.end() > start:
            yield from _cut(text[start:match.end()])
            start = match.end()
    if start < len(text):
        yield from _cut(text[start:])


def _cut(sentence: str) -> Iterator[str]:
    while len(sentence) > MAX_PIECE_CHARS:
        space = max(sentence.rfind(" ", 0, MAX_PIECE_CHARS), sentence.rfind("\n", 0, MAX_PIECE_CHARS))
        end = space + 1 if space > 0 else MAX_PIECE_CHARS
        yield sentence[:end]
        sentence = sentence[end:]
    if sentence:
        yield sentence


class TextNormalizer:
    """WeTextProcessing's text normalisation (``wetext``), loaded on first use; thread-safe."""

    def __init__(self) -> None:
        self._grammar: Callable[[str, str], str] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._grammar is not None

    def load(self, timings: Timings | None = None) -> None:
        """Read the grammars now (measured as ``load_normalizer``) unless they are loaded."""
        with self._lock:
            if self._grammar is None:
                with (timings or Timings()).measure("load_normalizer"):
                    from wetext.utils import normalize

                self._grammar = lambda text, lang: normalize(text, lang=lang, operator="tn")

    def normalize(self, text: str, timings: Timings | None = None) -> str:
        """``text`` as it is to be spoken, sentence by sentence; whitespace between pieces is kept."""
        self.load(timings)
        with self._lock:  # kaldifst's graphs are not documented as safe to share between threads
            return "".join(self._piece(piece) for piece in pieces(text))

    def _piece(self, piece: str) -> str:
        lead, body, trail = EDGES.fullmatch(piece).groups()
        if not body:
            return piece
        try:
            spoken = self._grammar(body, language(body))
        except (AssertionError, IndexError, RuntimeError) as err:  # no path through the grammar (its parser asserts)
            log.warning("normalisation of %r failed (%s: %s); it is spoken as written", body[:40],
                        type(err).__name__, err)
            spoken = body
        return lead + (spoken or body) + trail
