"""Normalised text, pauses and retakes through ``Worker.run`` and ``TTSModel.synthesize``: the real
tiny F5-TTS, real grammars, and a recogniser whose answers the test writes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterable

import numpy as np
import pytest

from f5worker.asr import Word
from f5worker.contract import SynthesisParams
from f5worker.engine.sampler import Sampler, WorkItem
from f5worker.formats import SAMPLE_RATE
from f5worker.ssml import Pause
from f5worker.storage import BucketSettings
from f5worker.timings import Timings
from f5worker.tts_model import PAUSE_FADE_S, fade_in, fade_out
from f5worker.voices import VoiceLibrary
from tests.support.audio_bytes import decode
from tests.support.paths import ROOT

FAST = {"nfe_step": 4, "seed": 3}
FADE = int(PAUSE_FADE_S * SAMPLE_RATE)


@pytest.fixture(scope="module")
def reference():
    return VoiceLibrary(None, BucketSettings.from_env({})).get("default", None, None, Timings())[0]


class ScriptedRecognizer:
    """Stands in for ``SpeechRecognizer``: ``transcribe`` returns the next of ``answers`` (the last
    one again once they run out) and records the waves; ``words`` returns ``heard_words``."""

    def __init__(self, answers: Iterable[str] = (), heard_words: list[Word] | None = None):
        self.answers = list(answers)
        self.heard: list[np.ndarray] = []
        self.heard_words = heard_words or []

    def transcribe(self, wave: np.ndarray, _sr: int, _timings: Timings) -> str:
        self.heard.append(np.array(wave))
        return self.answers[min(len(self.heard), len(self.answers)) - 1]

    def words(self, _wave: np.ndarray, _sr: int, _timings: Timings) -> list[Word]:
        return self.heard_words


def run(worker, **fields) -> dict:
    result = worker.run({"id": "t", "input": {**FAST, **fields}})
    assert "error" not in result, result
    return result


def audio_of(result: dict) -> np.ndarray:
    return decode(base64.b64decode(result["audio_base64"]))[0]


def zero_runs(wave: np.ndarray) -> list[int]:
    """The lengths of the runs of exact zeros in ``wave``."""
    padded = np.concatenate([[1.0], wave, [1.0]]) != 0
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(edges[1::2] - edges[::2])


# --- normalisation ---------------------------------------------------------------------------------

def test_the_model_speaks_the_normalised_text_and_the_result_says_so(make_worker, tiny_model, monkeypatch):
    planned: list[str] = []
    plan = tiny_model.plan
    monkeypatch.setattr(tiny_model, "plan", lambda *a: planned.append(a[2]) or plan(*a))
    worker = make_worker({})
    result = run(worker, text="It costs $5.50 at 10:30.")
    assert result["normalized_text"] == "It costs five point five dollars at ten thirty."
    assert planned == ["It costs five point five dollars at ten thirty."]
    assert {"load_normalizer", "normalize"} <= set(result["timings_ms"])
    second = run(worker, texts=["价格是5元。", "Plain words."])
    assert [o["normalized_text"] for o in second["outputs"]] == ["价格是五元。", "Plain words."]
    assert "load_normalizer" not in second["timings_ms"]
    off = run(worker, text="It costs $5.50.", normalize=False)
    assert off["normalized_text"] == "It costs $5.50." and planned[-1] == "It costs $5.50."
    assert "normalize" not in off["timings_ms"]


def test_word_timings_and_subtitles_are_the_normalised_words(make_worker):
    worker = make_worker({})
    worker.asr = ScriptedRecognizer(heard_words=[Word("It", 0.1, 0.3), Word("costs", 0.3, 0.6),
                                                 Word("$5.", 0.6, 1.2)])
    result = run(worker, text="It costs $5.", return_word_timings=True, subtitles="srt")
    assert [w["word"] for w in result["words"]] == ["It", "costs", "five", "dollars."]
    assert [(w["start"], w["end"]) for w in result["words"]] == [(0.1, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.2)]
    assert "It costs five dollars." in result["subtitles"]


COLD_START = """
import json, os, sys
from f5worker.pipeline import Worker
from f5worker.settings import Settings

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules} & {"wetext", "kaldifst", "jiwer"})

worker = Worker.from_settings(Settings.from_env(os.environ))
report = {"at_start": loaded()}
result = worker.run({"id": "n", "input": {"text": "Take 2.", "nfe_step": 2, "seed": 1}})
report["after_job"] = loaded()
report["stages"] = sorted(result["timings_ms"])
report["spoken"] = result["normalized_text"]
print(json.dumps(report))
"""


@pytest.mark.process
def test_cold_start_reads_no_grammar_and_the_first_job_loads_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "ASR_ENABLED"))}
    out = subprocess.run([sys.executable, "-c", COLD_START], cwd=ROOT, env={**env, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["at_start"] == []
    assert report["after_job"] == ["kaldifst", "wetext"] and report["spoken"] == "Take two."
    assert {"load_normalizer", "normalize"} <= set(report["stages"])


# --- pauses ------------------------------------------------------------------------------------------

def test_a_pause_is_exact_silence_between_faded_chunks(tiny_model, reference):
    """``synthesize`` with a pause: chunk 0 faded out, exactly the pause's samples of silence, chunk 1
    faded in; the chunks' noise is seeded by their positions among the text chunks alone."""
    params = SynthesisParams(nfe_step=4, seed=5, cross_fade_duration=0.0)
    sampler = Sampler(tiny_model.model, tiny_model.vocoder, "cpu")
    first, second = (sampler.sample([WorkItem(reference.audio, reference.text, text, params, i)])[0]
                     for i, text in enumerate(["Hello there.", "General Kenobi."]))
    reported: list[np.ndarray] = []
    ours = tiny_model.synthesize(reference.audio, reference.text,
                                 [Pause(0.25), "Hello there.", Pause(0.5), "General Kenobi.", Pause(0.125)], params,
                                 on_chunk=lambda _i, _n, part: reported.append(part))
    expected = np.concatenate([np.zeros(6000), fade_in(fade_out(first, FADE), FADE), np.zeros(12000),
                               fade_out(fade_in(second, FADE), FADE), np.zeros(3000)])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate(reported), ours)  # what a stream sends


def test_break_durations_measured_on_the_output_audio(make_worker):
    worker = make_worker({})
    plain = audio_of(run(worker, text="One two three. Four five six.", return_base64=True))
    paused = run(worker, text='One two three. <break time="700ms"/> Four five six.<break time="1s"/>',
                 return_base64=True)
    wave = audio_of(paused)
    assert paused["normalized_text"] == "One two three. Four five six."
    runs = sorted(zero_runs(wave))
    # the 16-bit file rounds the faded edges' tiniest samples to 0, at most one fade's worth
    assert SAMPLE_RATE <= runs[-1] <= SAMPLE_RATE + FADE and wave[-SAMPLE_RATE:].max() == 0
    assert int(0.7 * SAMPLE_RATE) <= runs[-2] <= int(0.7 * SAMPLE_RATE) + 2 * FADE
    assert max(zero_runs(plain)) < FADE  # the same text without breaks has no such silence


def test_markup_is_refused_not_spoken(make_worker):
    worker = make_worker({})
    for text in ["<speak>Hello</speak>", 'Hi <break time="3 sec"/>', 'Hi <break time="11s"/>', "Hi <br/> there"]:
        result = worker.run({"input": {"text": text}})
        assert set(result) == {"error"} and result["error"].startswith("input.text: "), result


# --- retakes -------------------------------------------------------------------------------------------

def sampled(tiny_model, reference, text: str, attempt: int) -> np.ndarray:
    params = SynthesisParams(**FAST)
    return tiny_model.sample(WorkItem(reference.audio, reference.text, text, params, 0, attempt))


def test_a_bad_take_is_synthesized_again_and_the_better_one_kept(make_worker, tiny_model, reference, monkeypatch):
    submitted: list[WorkItem] = []
    scheduler = tiny_model.scheduler
    submit = scheduler.submit
    monkeypatch.setattr(scheduler, "submit", lambda items, *rest: submitted.extend(items) or submit(items, *rest))
    worker = make_worker({})
    worker.asr = ScriptedRecognizer(["Hello bear.", "Hello there."])
    result = run(worker, text="Hello there.", verify=True, cross_fade_duration=0.0, output_format="wav",
                 return_base64=True)
    assert result["verify"] == {"wer": 0.0, "attempts": 2, "chunks": [{"wer": 0.0, "attempts": 2}]}
    assert [(i.text, i.attempt) for i in submitted] == [("Hello there.", 0), ("Hello there.", 1)]  # the engine's
    first, second = (sampled(tiny_model, reference, "Hello there.", a) for a in (0, 1))
    assert not np.allclose(first, second, atol=1e-3)  # another seed: other noise
    np.testing.assert_allclose(worker.asr.heard[1], second, atol=1e-6)
    np.testing.assert_allclose(audio_of(result), second, atol=1 / 16384)  # the retake was kept


def test_the_best_take_is_kept_and_attempts_are_capped(make_worker, tiny_model, reference):
    worker = make_worker({})
    worker.asr = ScriptedRecognizer(["Hello bear.", "Yellow pear.", "Jello fair.", "Hello there."])
    result = run(worker, text="Hello there.", verify=True, max_attempts=3, cross_fade_duration=0.0,
                 return_base64=True)
    assert result["verify"] == {"wer": 0.5, "attempts": 3, "chunks": [{"wer": 0.5, "attempts": 3}]}
    assert len(worker.asr.heard) == 3  # the fourth answer was never asked for
    np.testing.assert_allclose(audio_of(result), sampled(tiny_model, reference, "Hello there.", 0), atol=1 / 16384)


def test_retakes_per_chunk_and_per_output(make_worker):
    worker = make_worker({})
    # texts[0]: one chunk, right the first time; texts[1]: two chunks (a pause between), the first heard
    # wrong twice (max_attempts 2: it stays wrong), the second right
    worker.asr = ScriptedRecognizer(["Good morning.", "Bad.", "Worse.", "You have 2 cats."])
    result = run(worker, texts=["Good morning.", 'Bad luck. <break time="200ms"/> You have 2 cats.'], verify=True,
                 max_attempts=2, max_wer=0.2)
    first, second = (o["verify"] for o in result["outputs"])
    assert first == {"wer": 0.0, "attempts": 1, "chunks": [{"wer": 0.0, "attempts": 1}]}
    # "bad luck" heard as "bad": 1 error in 2 words; "you have two cats" heard with the digit, normalised alike
    assert second == {"wer": pytest.approx(1 / 6, abs=1e-4), "attempts": 3,
                      "chunks": [{"wer": 0.5, "attempts": 2}, {"wer": 0.0, "attempts": 1}]}


def test_retakes_are_reproducible(make_worker):
    worker = make_worker({})
    outputs = []
    for _ in range(2):
        worker.asr = ScriptedRecognizer(["Nope.", "Hello there."])
        outputs.append(run(worker, text="Hello there.", verify=True, return_base64=True)["audio_base64"])
    assert outputs[0] == outputs[1]


def test_verify_needs_speech_recognition(make_worker):
    result = make_worker({}).run({"input": {"text": "Hi.", "verify": True}})
    assert result == {"error": "input.verify: needs speech recognition, which is off on this endpoint (ASR_ENABLED)"}
