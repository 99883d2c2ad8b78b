"""Word-timing invariants (``asr.clean_words``) and subtitle files, read back by independent parsers."""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import asdict

import ass
import pandas
import srt
import webvtt
from hypothesis import given
from hypothesis import strategies as st

from f5worker.asr import Word, clean_words
from f5worker.subtitles import ASS_LOOKALIKES, MAX_CUE_CHARS, group_cues, to_ass, to_csv, to_json, to_srt, to_vtt

times = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 100))
chunks = st.lists(st.fixed_dictionaries({
    "text": st.one_of(st.none(), st.text(max_size=12)),
    "timestamp": st.one_of(st.none(), st.tuples(times, times), st.tuples(times)),
}), max_size=30)
durations = st.floats(min_value=0.0, max_value=600.0)


def assert_invariants(words: list[Word], duration: float) -> None:
    previous_end = 0.0
    for w in words:
        assert w.word and w.word == w.word.strip()
        assert previous_end <= w.start <= w.end <= round(duration, 3) + 1e-9
        previous_end = w.end


@given(chunks, durations)
def test_clean_words_keeps_order_and_puts_every_time_inside_the_audio(raw, duration):
    words = clean_words(raw, duration)
    assert [w.word for w in words] == [t for t in (str(c["text"] or "").strip() for c in raw) if t]
    assert_invariants(words, duration)


def test_clean_words_moves_backward_times_forward_and_fills_a_missing_end():
    raw = [{"text": " Hello", "timestamp": (0.5, 0.9)}, {"text": " world", "timestamp": (0.7, 0.6)},
           {"text": " ", "timestamp": (1.0, 1.1)}, {"text": " again.", "timestamp": (1.2, None)},
           {"text": "late", "timestamp": (9.0, 12.0)}]
    assert clean_words(raw, 2.0) == [Word("Hello", 0.5, 0.9), Word("world", 0.9, 0.9), Word("again.", 1.2, 2.0),
                                     Word("late", 2.0, 2.0)]


def seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


word_lists = st.builds(
    clean_words,
    st.lists(st.fixed_dictionaries({"text": st.text(min_size=1, max_size=50), "timestamp": st.tuples(
        st.floats(0, 4000), st.floats(0, 4000))}), max_size=40),
    st.floats(0, 4000),
)


@given(word_lists)
def test_srt_parses_back_to_the_same_words_and_times(words):
    cues = list(srt.parse(to_srt(words)))
    assert " ".join(c.content for c in cues).split() == " ".join(w.word for w in words).replace("-->", "->").split()
    expected = group_cues(words)
    assert len(cues) == len(expected)
    for parsed, cue in zip(cues, expected, strict=True):
        assert abs(parsed.start.total_seconds() - cue.start) < 1e-3 and abs(parsed.end.total_seconds() - cue.end) < 1e-3
        assert "\n" not in parsed.content


@given(word_lists)
def test_vtt_parses_back_to_the_same_words_and_times(words):
    text = to_vtt(words)
    assert text.startswith("WEBVTT\n")
    cues = list(webvtt.from_string(text))
    spoken = " ".join(w.word for w in words).replace("-->", "->").split()
    assert " ".join(html.unescape(c.text) for c in cues).split() == spoken
    expected = group_cues(words)
    assert len(cues) == len(expected)
    for parsed, cue in zip(cues, expected, strict=True):
        assert abs(seconds(parsed.start) - cue.start) < 1e-3 and abs(seconds(parsed.end) - cue.end) < 1e-3


def test_cues_break_at_sentence_ends_line_length_and_duration():
    text = "One two. Three four five six seven eight nine ten eleven twelve"
    words = [Word(w, i * 0.5, i * 0.5 + 0.4) for i, w in enumerate(text.split())]
    cues = group_cues(words)
    assert cues[0].text == "One two." and (cues[0].start, cues[0].end) == (0.0, 0.9)
    assert all(len(c.text) <= MAX_CUE_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in words)
    slow = [Word(f"w{i}", i * 2.0, i * 2.0 + 1.0) for i in range(6)]
    assert all(c.end - c.start <= 6.0 for c in group_cues(slow))
    assert group_cues([]) == [] and to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"


KARAOKE = re.compile(r"\{\\k(\d+)\}([^{]*)")


@given(word_lists)
def test_ass_parses_back_to_karaoke_lines_timed_word_by_word(words):
    """Read by the ``ass`` package: one Dialogue line per cue on the centisecond grid, whose
    ``{\\k}`` tags add up to the line's length and start each word when it is spoken."""
    events = ass.parse_string(to_ass(words)).events
    expected = group_cues(words)
    assert len(events) == len(expected)
    for event, cue in zip(events, expected, strict=True):
        start, end = round(event.start.total_seconds() * 100), round(event.end.total_seconds() * 100)
        assert (start, end) == (round(cue.start * 100), round(cue.end * 100))
        syllables = KARAOKE.findall(event.text)
        assert "".join(f"{{\\k{k}}}{t}" for k, t in syllables) == event.text
        assert [t.strip() for _, t in syllables] == [" ".join(w.word.split()).translate(ASS_LOOKALIKES)
                                                     for w in cue.words]
        lengths = [int(k) for k, _ in syllables]
        assert sum(lengths) == end - start
        starts = [start + sum(lengths[:i]) for i in range(len(lengths))]
        assert starts[1:] == [round(w.start * 100) for w in cue.words[1:]]


@given(word_lists)
def test_json_and_csv_hold_every_word_and_time(words):
    assert json.loads(to_json(words)) == [asdict(w) for w in words]
    table = pandas.read_csv(io.StringIO(to_csv(words)), dtype={"word": str}, keep_default_na=False,
                            float_precision="round_trip")
    assert list(table.columns) == ["word", "start", "end"]
    assert [(r.word, r.start, r.end) for r in table.itertuples()] == [(w.word, w.start, w.end) for w in words]
