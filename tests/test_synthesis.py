"""Chunked synthesis: the chunk-by-chunk path and its incremental cross-fade against upstream."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f5worker.storage import BucketSettings
from f5worker.timings import Timings
from f5worker.contract import SynthesisParams
from f5worker.formats import SAMPLE_RATE
from f5worker.tts_model import CrossFader, cross_fade
from f5worker.voices import VoiceLibrary

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5)


@pytest.fixture(scope="module")
def reference():
    return VoiceLibrary(None, BucketSettings.from_env({})).get("default", None, None, Timings())[0]


def test_chunk_by_chunk_equals_upstream_batch(tiny_model, reference, monkeypatch):
    """Same chunks, same seed: our sequential synthesis + incremental cross-fade gives upstream's
    ``infer_batch_process`` wave. Upstream runs chunks in a thread pool that draws noise from the
    global RNG in whatever order the threads run; one worker makes that order the chunk order."""
    from f5_tts.infer import utils_infer
    from f5_tts.model.utils import seed_everything

    chunks = tiny_model.plan(reference.duration_s, reference.text, LONG_TEXT, 1.0)
    assert len(chunks) == 3
    params = SynthesisParams(nfe_step=4, seed=5)
    reported: list[tuple[int, int, np.ndarray]] = []
    ours = tiny_model.synthesize(reference.audio, reference.text, chunks, params,
                                 on_chunk=lambda i, n, part: reported.append((i, n, part)))

    monkeypatch.setattr(utils_infer, "ThreadPoolExecutor", functools.partial(ThreadPoolExecutor, max_workers=1))
    seed_everything(5)
    theirs, sr, _ = next(utils_infer.infer_batch_process(
        (reference.audio, SAMPLE_RATE), reference.text, chunks, tiny_model.model, tiny_model.vocoder,
        progress=None, nfe_step=4, cross_fade_duration=params.cross_fade_duration, device="cpu"))

    assert sr == SAMPLE_RATE
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))
    assert [(i, n) for i, n, _ in reported] == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_array_equal(np.concatenate([part for *_, part in reported]), ours)
    # every chunk's part is audio (the cross-fade holds back 0.15 s, not a whole chunk)
    assert all(len(part) > SAMPLE_RATE for *_, part in reported)


def fold(waves: list[np.ndarray], samples: int) -> np.ndarray:
    joined = waves[0]
    for wave in waves[1:]:
        joined = cross_fade(joined, wave, samples)
    return joined


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6), samples=st.integers(0, 25))
def test_incremental_cross_fade_equals_folded_cross_fade(lengths, samples):
    rng = np.random.default_rng(len(lengths) * 100 + samples)
    waves = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    fader = CrossFader(samples)
    parts = [fader.push(wave) for wave in waves] + [fader.finish()]
    np.testing.assert_array_equal(np.concatenate(parts), fold(waves, samples))


def test_cross_fade_is_upstreams_linear_fade():
    ones, zeros = np.ones(10, dtype=np.float32), np.zeros(10, dtype=np.float32)
    joined = cross_fade(ones, zeros, 5)
    assert len(joined) == 15
    np.testing.assert_allclose(joined[5:10], np.linspace(1, 0, 5))
    np.testing.assert_array_equal(cross_fade(ones, zeros, 0), np.concatenate([ones, zeros]))
