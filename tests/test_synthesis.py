"""Chunked synthesis through the engine, and the incremental cross-fade against upstream's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f5worker.contract import SynthesisParams
from f5worker.formats import SAMPLE_RATE
from f5worker.storage import BucketSettings
from f5worker.timings import Timings
from f5worker.tts_model import CrossFader, cross_fade
from f5worker.voices import VoiceLibrary

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 5)


@pytest.fixture(scope="module")
def reference():
    return VoiceLibrary(None, BucketSettings.from_env({})).get("default", None, None, Timings())[0]


def test_chunked_synthesis_is_reproducible_and_reports_each_chunk_in_order(tiny_model, reference):
    """Same chunks, same seed: the same wave, and the parts reported per chunk are that wave. (Until
    issue 13 this compared with upstream's ``infer_batch_process`` under ``seed_everything``: each
    chunk's noise now comes from its own generator seeded by (seed, chunk index), so it no longer
    draws upstream's global-RNG noise; equality with upstream given the same noise is
    ``tests/test_sampler.py``'s.)"""
    chunks = tiny_model.plan(reference.duration_s, reference.text, LONG_TEXT, 1.0)
    assert len(chunks) == 3
    params = SynthesisParams(nfe_step=4, seed=5)
    reported: list[tuple[int, int, np.ndarray]] = []
    ours = tiny_model.synthesize(reference.audio, reference.text, chunks, params,
                                 on_chunk=lambda i, n, part: reported.append((i, n, part)))
    again = tiny_model.synthesize(reference.audio, reference.text, chunks, params)
    other_seed = tiny_model.synthesize(reference.audio, reference.text, chunks, SynthesisParams(nfe_step=4, seed=6))

    np.testing.assert_array_equal(ours, again)
    assert ours.dtype == np.float32 and not np.array_equal(ours, other_seed)
    assert [(i, n) for i, n, _ in reported] == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_array_equal(np.concatenate([part for *_, part in reported]), ours)
    # every chunk's part is audio (the cross-fade holds back 0.15 s, not a whole chunk)
    assert all(len(part) > SAMPLE_RATE for *_, part in reported)


def test_synthesis_is_the_samplers_waves_cross_faded(tiny_model, reference):
    """The joined wave is each chunk sampled alone by the engine's ``Sampler`` (noise seeded by
    its position), folded with upstream's cross-fade."""
    from f5worker.engine.sampler import Sampler, WorkItem

    chunks = tiny_model.plan(reference.duration_s, reference.text, LONG_TEXT, 1.0)
    params = SynthesisParams(nfe_step=4, seed=5)
    sampler = Sampler(tiny_model.model, tiny_model.vocoder, "cpu")
    waves = [sampler.sample([WorkItem(reference.audio, reference.text, chunk, params, i)])[0]
             for i, chunk in enumerate(chunks)]
    ours = tiny_model.synthesize(reference.audio, reference.text, chunks, params)
    expected = fold(waves, int(params.cross_fade_duration * SAMPLE_RATE))
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)  # the job's 3 chunks ran as one batch


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
