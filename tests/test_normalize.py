"""Text normalisation (WeTextProcessing's grammars through wetext), SSML pauses in the job's text,
and word error rates / word timings on the normalised text: the parts that need no model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f5worker import normalize, ssml, wer
from f5worker.asr import Word
from f5worker.contract import InputError, parse_job
from f5worker.timings import Timings


@pytest.fixture(scope="module")
def normalizer() -> normalize.TextNormalizer:
    return normalize.TextNormalizer()


@pytest.mark.parametrize(("text", "spoken"), [
    ("$5.50 at 10:30 on 3/4/2025, 42%.",
     "five point five dollars at ten thirty on the fourth of march twenty twenty five, forty two percent."),
    ("The 1st and 22nd items.", "The first and twenty second items."),
    ("Dr. Smith ran 5km in 25 min.", "doctor Smith ran five kilometers in twenty five minutes."),
    ("It weighs 3.5 kg and costs €12.", "It weighs three point five kilograms and costs twelve euros."),
    ("1,234,567 people.", "one million two hundred thirty four thousand five hundred and sixty seven people."),
    ("No digits here, just words.", "No digits here, just words."),
])
def test_english(normalizer, text, spoken):
    assert normalizer.normalize(text) == spoken


@pytest.mark.parametrize(("text", "spoken"), [
    ("价格是5.5元，时间10:30，2025年3月4日，增长42%。",
     "价格是五点五元，时间十点三十分，二零二五年三月四日，增长百分之四十二。"),
    ("今天气温-5℃，体重70kg。", "今天气温负五摄氏度，体重七十千克。"),
    ("我有3个苹果。", "我有三个苹果。"),
    ("没有数字。", "没有数字。"),
])
def test_chinese(normalizer, text, spoken):
    assert normalizer.normalize(text) == spoken


def test_each_sentence_gets_the_grammar_of_its_script(normalizer):
    """An English sentence after a Chinese one is read in English; the whitespace between is kept.
    (The English grammar alone cannot read Chinese at all: it has no path through it.)"""
    text = "  我有3个苹果。 It costs $5.\n\n价格是5元！Then 2 more. "
    assert normalizer.normalize(text) == "  我有三个苹果。 It costs five dollars.\n\n价格是五元！Then two more. "
    assert [normalize.language(p) for p in normalize.pieces(text) if p.strip()] == ["zh", "en", "zh", "en"]


def test_grammars_load_once_on_first_use():
    fresh = normalize.TextNormalizer()
    assert not fresh.loaded
    first, second = Timings(), Timings()
    assert fresh.normalize("2 cats", first) == "two cats"
    fresh.normalize("3 dogs", second)
    assert fresh.loaded and "load_normalizer" in first.ms and "load_normalizer" not in second.ms


def test_a_piece_the_grammar_cannot_read_is_spoken_as_written(normalizer, monkeypatch):
    def refuse(_text: str, _lang: str) -> str:
        raise AssertionError

    monkeypatch.setattr(normalizer, "_grammar", refuse)
    assert normalizer.normalize("Keep 5. As is.") == "Keep 5. As is."


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab 1.,!?。，\n我"), max_size=3 * normalize.MAX_PIECE_CHARS))
def test_pieces_cover_the_text_and_stay_short(text):
    parts = list(normalize.pieces(text))
    assert "".join(parts) == text
    assert all(0 < len(p) <= normalize.MAX_PIECE_CHARS for p in parts)


def test_a_long_unbroken_sentence_is_cut_at_spaces(normalizer):
    text = " ".join(["7 apples"] * 200)  # 1599 characters, no sentence end
    parts = list(normalize.pieces(text))
    assert len(parts) > 1 and all(p.endswith(" ") for p in parts[:-1])
    assert normalizer.normalize(text) == " ".join(["seven apples"] * 200)


# --- pauses ---------------------------------------------------------------------------------------

def test_breaks_become_pauses():
    parts = ssml.parse("""Hello <break time="500ms"/>there<BREAK TIME='1.5s' /> <break time="250ms"/>you.""")
    assert parts == ("Hello ", ssml.Pause(0.5), "there", ssml.Pause(1.75), "you.")
    assert ssml.spoken_text(parts) == "Hello there you."
    assert ssml.parse('<break time="1s"/>Hi<break time="2s"/>.') == (ssml.Pause(1.0), "Hi", ssml.Pause(2.0))
    assert ssml.parse("a < b and c > d") == ("a < b and c > d",)


@pytest.mark.parametrize("text", [
    "<speak>Hello</speak>",
    "Hello <break/> there",
    'Hello <break time="1s"> there',
    'Hello <break time="1s" strength="weak"/> there',
    'Hello <break time="1 min"/> there',
    'Hello <break time="-1s"/> there',
    'Hello <break time="1e3ms"/> there',
    'Hello <break time=1s/> there',
    'Hello <break time="1s\'/> there',
    "Hello </break> there",
    "Hello <!-- a comment --> there",
    "<?xml version='1.0'?>Hello",
    "Hello <script>alert(1)</script>",
    "Hello <b>there</b>",
    'Hello <break time="1s"/ > there',
    'Hello <break time="1s"//> there',
    'Hello <break time="1s"/><break time="2s"/ there',
])
def test_markup_we_cannot_read_is_an_input_error(text):
    with pytest.raises(InputError, match=r"^input\.text: markup .* cannot be read"):
        parse_job({"text": text})


def test_pause_limits():
    assert parse_job({"text": 'a <break time="10s"/> b'}).scripts == (("a ", ssml.Pause(10.0), " b"),)
    with pytest.raises(InputError, match=r"^input\.text: .* over the limit of 10 s for one pause"):
        parse_job({"text": 'a <break time="10001ms"/> b'})
    many = " b ".join(['<break time="10s"/>'] * 7)
    with pytest.raises(InputError, match=r"^input\.text: asks for 70 s of pauses, over the limit of 60 s in all"):
        parse_job({"text": f"a {many} c"})
    with pytest.raises(InputError, match=r"^input\.texts: asks for 70 s of pauses"):
        parse_job({"texts": ['a <break time="10s"/> b'] * 7})
    with pytest.raises(InputError, match=r"^input\.remove_silence: would shorten the pauses"):
        parse_job({"text": 'a <break time="2s"/> b', "remove_silence": True})
    with pytest.raises(InputError, match=r"^input\.texts\[1\]: has nothing to speak, only pauses"):
        parse_job({"texts": ["a", '<break time="1s"/> . <break time="1s"/>']})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/ \"'=abekrtimsBRK0123456789.!?-\x00")), max_size=60))
def test_any_text_is_read_or_refused_never_spoken_as_markup(text):
    try:
        parts = ssml.parse(text)
    except ssml.MarkupError:
        return
    assert not any(ssml.TAG_START.search(p) for p in ssml.speech(parts))
    assert all(0 <= p.seconds for p in parts if isinstance(p, ssml.Pause))


# --- job fields -----------------------------------------------------------------------------------

def test_normalize_and_verify_fields():
    plain = parse_job({"text": "Hi 5"})
    assert plain.normalize and not plain.verify and (plain.max_attempts, plain.max_wer) == (3, 0.1)
    assert not parse_job({"text": "Hi 5", "normalize": False}).normalize
    verified = parse_job({"text": "Hi", "verify": True, "max_attempts": 5, "max_wer": 0})
    assert verified.verify and (verified.max_attempts, verified.max_wer) == (5, 0.0)
    for fields, error in [({"normalize": "no"}, "input.normalize: must be true or false"),
                          ({"verify": 1}, "input.verify: must be true or false"),
                          ({"max_attempts": 2}, "input.max_attempts: applies to retakes: it needs verify: true"),
                          ({"verify": True, "max_attempts": 0}, "input.max_attempts: must be between 1 and 10"),
                          ({"verify": True, "max_attempts": 11}, "input.max_attempts: must be between 1 and 10"),
                          ({"verify": True, "max_wer": 1.5}, "input.max_wer: must be between 0 and 1")]:
        with pytest.raises(InputError) as caught:
            parse_job({"text": "Hi", **fields})
        assert str(caught.value).startswith(error)


# --- word error rates and word timings --------------------------------------------------------------

def test_word_error_rate():
    assert wer.score("Five point five dollars.", "five point five dollar").wer == 0.25
    assert wer.score("It's twenty-five", "it’s twenty five").wer == 0.0
    assert wer.score("价格是五元。", "价格是五。").wer == pytest.approx(1 / 5)  # Chinese: by character
    assert wer.score("hello", "").wer == 1.0 and wer.score("", "").wer == 0.0 and wer.score("!", "um").wer == 1.0
    assert wer.total([wer.score("a b", "a c"), wer.score("d e f g", "d e f g")]).wer == pytest.approx(1 / 6)


def test_word_timings_move_onto_the_spoken_words():
    heard = [Word("It", 0.0, 0.2), Word("costs", 0.2, 0.5), Word("$5.50.", 0.5, 1.5)]
    words = wer.retime("It costs five point five dollars.", heard,
                       ["It", "costs", "five point five dollars."], 2.0)
    assert words == [Word("It", 0.0, 0.2), Word("costs", 0.2, 0.5), Word("five", 0.5, 0.75),
                     Word("point", 0.75, 1.0), Word("five", 1.0, 1.25), Word("dollars.", 1.25, 1.5)]


def test_unheard_words_share_the_gaps():
    words = wer.retime("Hello — dear old friend", [Word("hello", 0.1, 0.4), Word("friend", 1.0, 1.2)],
                       ["hello", "friend"], 1.5)
    assert words == [Word("Hello", 0.1, 0.4), Word("—", 0.4, 0.4), Word("dear", 0.4, 0.7),
                     Word("old", 0.7, 1.0), Word("friend", 1.0, 1.2)]
    assert wer.retime("a b c", [], [], 3.0) == [Word("a", 0, 1), Word("b", 1, 2), Word("c", 2, 3)]


def test_chinese_word_timings_are_per_character():
    words = wer.retime("价格是五元。", [Word("价格", 0.1, 0.4), Word("是5元", 0.5, 0.8)], ["价格", "是五元"], 1.0)
    assert [w.word for w in words] == ["价", "格", "是", "五", "元。"]
    assert words[0].start == 0.1 and words[-1].end == 0.8
