"""Text cut into chunks the model can take (f5worker/chunking.py): upstream's chunks for text
upstream splits within budget, finer cuts where it does not, checked against upstream's own
estimate and tokenizer; then the inputs that crashed the worker, end to end on the tiny model."""

from __future__ import annotations

import base64
import re
from itertools import accumulate, pairwise

import pytest
import regex
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from f5worker.chunking import HOP_LENGTH, MAX_CONTEXT_S, Budget, max_text_tokens, plan
from f5worker.contract import InputError
from f5worker.formats import SAMPLE_RATE
from f5worker.storage import BucketSettings
from f5worker.timings import Timings
from f5worker.voices import VoiceLibrary

POSITIONS = 8192  # DiT's precompute_max_pos, the published F5TTS_v1_Base's and the tiny model's
CONTEXT_FRAMES = MAX_CONTEXT_S * SAMPLE_RATE / HOP_LENGTH
UPSTREAM_SENTENCE_END = r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])"  # utils_infer.chunk_text's split

LYRIC_WORDS = "we walk along the river while the evening light is fading slow".split()
LYRIC = "\n".join(" ".join(LYRIC_WORDS[(3 * i + k) % len(LYRIC_WORDS)] for k in range(7)) for i in range(30))[:971]
SENTENCE = ("the old man who lived at the end of the road kept a garden full of roses and tomatoes and every "
            "morning he would walk between the rows with a small can of water ")
# Each crashed the worker with "The size of tensor a (...) must match the size of tensor b (8192)".
UNPUNCTUATED = {
    "chinese": {"text": "今天天气很好我们去公园散步" * 23},
    "lyric": {"text": LYRIC},
    "thai": {"text": "สวัสดีครับ" * 30},
    "x3000": {"text": "x" * 3000},
    "slow": {"text": (SENTENCE * 3)[:400].strip(), "speed": 0.25},
}
PUNCTUATED = [
    " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5),
    "Hi. " + "This sentence is long enough to need a chunk of its own, or nearly so; it goes on and on! " * 4,
    "今天天气很好。我们去公园散步，好吗？" * 12,
    "Mixed text: 今天天气很好。Then English again, with commas, semicolons; and colons: done!\nNew line. " * 6,
    "Short.",
]

FRAGMENTS = [*"abcdxyz ABC  \n\t.,;:!?。，！？；：", "中", "文", "天", "ส", "ั", "ี", "é", "e\u0301", "😀", "\u200d",
             "—"]
CHARACTER = st.one_of(st.sampled_from(FRAGMENTS), st.characters(codec="utf-8"))
RUN = st.lists(CHARACTER, min_size=1, max_size=40).map("".join)
SEPARATOR = st.sampled_from(["", " ", "  ", "\n", ", ", ". ", "。", "！", "? \n"])
TEXT = st.lists(st.tuples(RUN, SEPARATOR), min_size=1, max_size=60).map(lambda runs: "".join(r + s for r, s in runs))
SPEED = st.floats(0.25, 4.0)


@pytest.fixture(scope="module")
def reference():
    return VoiceLibrary(None, BucketSettings.from_env({})).get("default", None, None, Timings())[0]


def default_budget(reference, speed: float = 1.0) -> Budget:
    return Budget(reference.duration_s, reference.text, speed, POSITIONS)


@st.composite
def sane_budgets(draw) -> Budget:
    """A reference of 1-12 s whose transcript has 5-40 bytes a second (speech has ~15)."""
    ref_s = draw(st.floats(1.0, 12.0))
    ref_bytes = int(ref_s * draw(st.floats(5.0, 40.0)))
    ref_text = "a" * (ref_bytes - 1) + draw(st.sampled_from(FRAGMENTS))  # only its size and its end count
    return Budget(ref_s, ref_text, draw(SPEED), POSITIONS)


def upstream_chunks(text: str, max_bytes: int) -> list[str]:
    from f5_tts.infer.utils_infer import chunk_text

    return [chunk for chunk in chunk_text(text, max_chars=max_bytes) if chunk]


def upstream_tokens(text: str) -> int:
    from f5_tts.model.utils import convert_char_to_pinyin

    return len(convert_char_to_pinyin([text])[0])


def spans(text: str, chunks: list[str]) -> list[tuple[int, int]]:
    """Where each chunk lies in ``text``: in order, nothing but whitespace between or around them,
    each equal to its span up to the whitespace inside (a run of it may read as one space)."""
    pattern = r"\s*" + r"\s*".join("(" + r"\s+".join(map(re.escape, c.split())) + ")" for c in chunks) + r"\s*"
    match = re.fullmatch(pattern, text)
    assert match is not None, (text, chunks)
    return [match.span(i) for i in range(1, len(chunks) + 1)]


def grapheme_bounds(text: str) -> dict[int, int]:
    """Offset of each grapheme cluster boundary -> bytes of the cluster that ends there."""
    bounds, offset = {0: 0}, 0
    for cluster in regex.findall(r"\X", text):
        offset += len(cluster)
        bounds[offset] = len(cluster.encode())
    return bounds


# ---------------------------------------------------------------- same as upstream where upstream fits

@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("text", PUNCTUATED)
def test_punctuated_text_gets_upstreams_chunks(reference, text, speed):
    budget = default_budget(reference, speed)
    chunks = plan(text, budget)
    assert chunks == upstream_chunks(text, budget.max_bytes)
    assert all(len(c.encode()) <= budget.max_bytes for c in chunks)


def test_a_punctuated_text_is_cut_as_upstream_cuts_it(reference):
    assert len(plan(PUNCTUATED[0], default_budget(reference))) == 3


@given(text=TEXT, budget=sane_budgets())
def test_text_whose_sentences_fit_gets_upstreams_chunks(text, budget):
    upstream_sentences = re.split(UPSTREAM_SENTENCE_END, text)
    assume(all(len(s.encode()) <= budget.max_bytes for s in upstream_sentences))
    assert plan(text, budget) == upstream_chunks(text, budget.max_bytes)


# ---------------------------------------------------------------- every chunk fits

@given(text=TEXT, budget=sane_budgets())
def test_every_chunk_fits_the_context_and_the_positions(text, budget):
    chunks = plan(text, budget)
    for chunk in chunks:
        assert budget.frames(chunk) <= CONTEXT_FRAMES  # upstream's estimate plus the reference: within 22 s
        assert max(upstream_tokens(budget.model_ref_text + chunk), budget.frames(chunk)) + 1 <= POSITIONS
        assert len(chunk.encode()) <= max(budget.max_bytes, 4)  # over it: one code point under a 4-byte budget


@given(text=TEXT, budget=sane_budgets())
def test_chunks_rejoin_into_the_text_and_cut_between_grapheme_clusters(text, budget):
    chunks = plan(text, budget)
    located = spans(text, chunks)
    bounds = grapheme_bounds(text)
    sentence_ends = {m.start() for m in re.finditer(UPSTREAM_SENTENCE_END, text)}  # upstream cuts there anyway
    for (_, end), (start, _) in pairwise(located):
        if end == start:  # no whitespace at the cut: cut between clusters, unless one is over the budget
            assert end in bounds or end in sentence_ends or max(bounds.values()) > budget.max_bytes, (text, chunks)


@given(text=TEXT, ref_s=st.floats(0.3, 30.0), ref_text=st.text(min_size=1, max_size=3000), speed=SPEED)
def test_any_reference_gives_fitting_chunks_or_a_clear_error(text, ref_s, ref_text, speed):
    budget = Budget(ref_s, ref_text, speed, POSITIONS)
    try:
        chunks = plan(text, budget)
    except InputError as err:
        assert str(err).startswith("input.text: cannot be cut into chunks the model can take: ")
        return
    assert all(budget.problem(chunk) is None for chunk in chunks)
    assert all(budget.frames(chunk) <= CONTEXT_FRAMES for chunk in chunks)


@given(text=TEXT)
def test_token_bound_holds_for_upstreams_tokenizer(text):
    assert upstream_tokens(text) <= max_text_tokens(text)


@given(samples=st.integers(SAMPLE_RATE // 2, 12 * SAMPLE_RATE), ref_text=st.text(min_size=1, max_size=200),
       chunk=st.text(min_size=1, max_size=300), speed=SPEED)
def test_frames_is_the_duration_upstream_asks_the_model_for(samples, ref_text, chunk, speed):
    from f5_tts.infer.utils_infer import infer_batch_process

    class Asked(Exception):
        pass

    class Model:
        def sample(self, duration, **_):
            raise Asked(duration)

    audio = torch.full((1, samples), 0.1)
    with pytest.raises(Asked) as asked:
        next(infer_batch_process((audio, SAMPLE_RATE), ref_text, [chunk], Model(), None, progress=None,
                                 speed=speed, device="cpu"))
    assert Budget(samples / SAMPLE_RATE, ref_text, speed).frames(chunk) == asked.value.args[0]


def test_unpunctuated_inputs_are_cut_within_budget(reference):
    for fields in UNPUNCTUATED.values():
        budget = default_budget(reference, fields.get("speed", 1.0))
        chunks = plan(fields["text"], budget)
        assert len(chunks) > 1 and all(budget.problem(c) is None for c in chunks)
        assert "".join("".join(c.split()) for c in chunks) == "".join(fields["text"].split())


def test_cuts_fall_at_whitespace_then_between_chinese_words(reference):
    import rjieba

    budget = default_budget(reference)
    assert all(set(chunk.split()) <= set(LYRIC.split()) for chunk in plan(LYRIC, budget))  # no word cut
    text = UNPUNCTUATED["chinese"]["text"]
    chunks = plan(text, budget)
    assert "".join(chunks) == text
    word_ends = set(accumulate(map(len, rjieba.cut(text))))
    assert set(accumulate(map(len, chunks))) <= word_ends


def test_thai_is_not_cut_inside_a_cluster(reference):
    chunks = plan(UNPUNCTUATED["thai"]["text"], default_budget(reference))
    assert len(chunks) > 1
    assert not any(regex.match(r"\p{M}", chunk) for chunk in chunks)  # no chunk starts with a vowel mark


def test_a_long_transcript_leaves_the_text_room_in_the_positions():
    budget = Budget(1.0, "a" * 3000, 4.0, POSITIONS)  # upstream's budget alone: 252000 bytes
    chunks = plan("word " * 1000, budget)
    assert len(chunks) > 1
    assert all(upstream_tokens(budget.model_ref_text + chunk) + 1 <= POSITIONS for chunk in chunks)


# ---------------------------------------------------------------- nothing fits: a clear error

def test_a_transcript_too_long_for_the_positions_is_refused():
    with pytest.raises(InputError, match=r"^input\.text: .* text positions, over the model's 8192"):
        plan("Hello there.", Budget(10.0, "word " * 3000, 1.0, POSITIONS))


def test_a_transcript_too_short_for_its_clip_is_refused():
    with pytest.raises(InputError, match=r"^input\.text: .* over the model's 22 s: the transcript is too short"):
        plan("Hello there.", Budget(12.0, "Hi. ", 1.0, POSITIONS))


def test_the_model_plans_with_its_own_position_table(tiny_model):
    assert tiny_model.model.transformer.text_embed.precompute_max_pos == POSITIONS
    with pytest.raises(InputError, match=r"text positions, over the model's 8192"):
        tiny_model.plan(10.0, "word " * 3000, "Hello there.", 1.0)


# ---------------------------------------------------------------- speed and short texts

def test_speed_does_not_change_a_text_under_10_bytes():
    """Upstream's infer_batch_process speaks a chunk under 10 UTF-8 bytes at speed 0.3 (README, ``speed``)."""
    budgets = [Budget(5.0, "Some call me nature, others call me mother nature. ", speed) for speed in (0.25, 1.0, 4.0)]
    assert len({budget.frames("Hi there.") for budget in budgets}) == 1  # 9 bytes
    slow, normal, fast = (budget.frames("Hi there!!") for budget in budgets)  # 10 bytes: the job's speed
    assert slow > normal > fast


def test_speed_through_the_worker(make_worker):
    worker = make_worker({})

    def duration(text: str, speed: float) -> float:
        result = worker.run({"id": "s", "input": {"text": text, "speed": speed, "nfe_step": 2, "seed": 1}})
        assert "error" not in result, result
        return result["duration_s"]

    assert duration("Hi.", 0.25) == duration("Hi.", 1.0) == duration("Hi.", 4.0) == 0.939  # README's figure
    assert duration("Hello there.", 0.25) > duration("Hello there.", 1.0) > duration("Hello there.", 4.0)


# ---------------------------------------------------------------- end to end on the tiny model

@pytest.mark.parametrize("name", UNPUNCTUATED)
def test_unpunctuated_text_completes(make_worker, bucket_env, s3, name):
    messages: list[str] = []
    result = make_worker(bucket_env).run({"id": name, "input": {**UNPUNCTUATED[name], "nfe_step": 2, "seed": 1}},
                                         progress=messages.append)
    assert "error" not in result, result
    chunks = int(messages[-1].rsplit(" ", 1)[1])
    assert chunks > 1 and messages[-1] == f"chunk {chunks} of {chunks}"
    assert result["duration_s"] > 20
    data = s3.get_object(Bucket=bucket_env["BUCKET_NAME"], Key=result["audio_key"])["Body"].read()
    assert len(data) > 20 * SAMPLE_RATE * 2


def test_unpunctuated_text_streams_only_audio(make_worker):
    items: list[dict] = []
    text = "Hello there, this is a test. " + UNPUNCTUATED["chinese"]["text"]  # was: chunk 1's audio, then an error
    job = {"id": "st", "input": {"text": text, "nfe_step": 2, "seed": 1, "stream": True, "output_format": "pcm"}}
    result = make_worker({}).run(job, emit=items.append)
    assert "error" not in result, result
    assert [item["chunk"] for item in items] == list(range(result["chunks"]))
    assert all(set(item) == {"chunk", "format", "sample_rate", "audio_base64"} for item in items)
    pcm = b"".join(base64.b64decode(item["audio_base64"]) for item in items)
    assert result["duration_s"] > 20 and len(pcm) / 2 / SAMPLE_RATE == pytest.approx(result["duration_s"], abs=1e-3)
