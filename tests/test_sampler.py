"""Our sampling loop (f5worker.engine.sampler) against upstream's ``infer_batch_process``, and a
batch against its items sampled alone, on the tiny model's architecture in fp32 on the CPU.

The tiny checkpoint is upstream's initialisation, whose DiT zeroes its adaptive norms, its output
projection and its text ConvNeXt's GRN: its flow is 0, the output is the noise, and padding could
leak without changing a sample. ``dense_model`` gives every parameter random values of its
layer's scale, so that what attention, the GRN and the convolutions see reaches the output
(checked: without the attention mask the batched waves differ by 3e-2, without the per-item
text embedding the batched mels by 1e-2; with both, waves by 1.5e-7 and mels by 6e-6).
"""

from __future__ import annotations

from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from f5worker.contract import SynthesisParams
from f5worker.engine.sampler import Sampler, WorkItem, batch_key, condition, integrate, item_noise
from f5worker.engine.upstream import f5_model
from f5worker.tts_model import MEL_SPEC, ODE_METHOD, TTSModel, load_f5, load_vocos
from f5worker.voices import prepare_reference
from tests.support.bucket import ALICE_TEXT

ZH_TEXT = "对，这就是我，万人敬仰的太乙真人。"  # basic_ref_zh.wav's transcript (upstream's speech_edit.py)
BATCH_TOLERANCE = 1e-4


def example_reference(name: str, text: str):
    return prepare_reference(Path(str(files("f5_tts").joinpath(f"infer/examples/basic/{name}"))), text)


@pytest.fixture(scope="module")
def references():
    return {"en": example_reference("basic_ref_en.wav", ALICE_TEXT),
            "zh": example_reference("basic_ref_zh.wav", ZH_TEXT)}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn at random: matrices at 1/sqrt(fan-in), vectors (biases, GRN) at 0.5."""
    generator = torch.Generator().manual_seed(7)

    def draw(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=generator) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)

    model.load_state_dict({name: draw(p) for name, p in model.named_parameters()}, strict=False, assign=True)
    return model


@pytest.fixture(scope="module")
def dense_model(tiny_model: TTSModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tiny model and vocoder, loaded as the worker loads them, the model randomised."""
    resolved = tiny_model.resolved
    model = load_f5(f5_model().DiT, resolved.arch, resolved.checkpoint, resolved.vocab, "cpu")
    return randomise(model), load_vocos(resolved.vocoder_dir, "cpu")


def upstream_wave(model, vocoder, item: WorkItem, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """``infer_batch_process`` on one chunk, its ``torch.randn`` answering with ``item``'s noise."""
    from f5_tts.infer.utils_infer import infer_batch_process

    real_randn = torch.randn
    drawn = []

    def randn(*shape, device=None, dtype=None, **kwargs):
        if "generator" in kwargs:  # item_noise's own draw
            return real_randn(*shape, device=device, dtype=dtype, **kwargs)
        drawn.append(shape)
        return item_noise(item, *shape).to(device=device, dtype=dtype)

    monkeypatch.setattr(torch, "randn", randn)
    try:
        wave, _, _ = next(infer_batch_process(
            (item.ref_audio, 24000), item.ref_text, [item.text], model, vocoder, progress=None,
            nfe_step=item.params.nfe_step, cfg_strength=item.params.cfg_strength,
            sway_sampling_coef=item.params.sway_sampling_coef, speed=item.params.speed, device="cpu",
        ))
    finally:
        monkeypatch.setattr(torch, "randn", real_randn)
    assert len(drawn) == 1  # the initial noise, nothing else
    return wave


@pytest.mark.parametrize(("voice", "text", "params", "gain"), [
    ("en", "A single chunk, spoken through our own loop.", SynthesisParams(nfe_step=6, seed=1), 1.0),
    ("zh", "短句。", SynthesisParams(nfe_step=7, seed=2, speed=1.3), 1.0),  # short text: upstream's speed 0.3
    ("en", "A quiet reference is brought up, its output down.", SynthesisParams(nfe_step=5, cfg_strength=0.0), 0.05),
])
def test_one_item_is_bit_identical_to_upstream(dense_model, references, monkeypatch, voice, text, params, gain):
    model, vocoder = dense_model
    ref = references[voice]
    item = WorkItem(ref_audio=ref.audio * gain, ref_text=ref.text, text=text, params=params, chunk_index=3)
    ours = Sampler(model, vocoder, "cpu").sample([item])[0]
    theirs = upstream_wave(model, vocoder, item, monkeypatch)
    assert ours.dtype == np.float32 and np.abs(ours).max() > 0
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


@pytest.fixture(scope="module")
def mixed_items(references) -> list[WorkItem]:
    """Mixed lengths (one short text), voices, seeds, speeds and chunk indices: padding everywhere.
    The references are cut to 3 s and 4 s to keep the test short."""
    specs = [  # voice, text, seed, speed, chunk
        ("en", "The first item of the batch is of a middling length.", 11, 1.0, 0),
        ("zh", "第二个句子比较长，用来测试不同的长度与参考音频。", 11, 0.8, 1),
        ("en", "Short.", 5, 1.0, 0),
        ("en", "A fourth, faster item that says a little more than the others do, to be the longest.", 99, 1.7, 2),
        ("zh", "你好，世界。", 3, 1.2, 0),
    ]
    clips = {"en": references["en"].audio[:, : 3 * 24000], "zh": references["zh"].audio[:, : 4 * 24000]}
    return [WorkItem(ref_audio=clips[v], ref_text=references[v].text, text=text,
                     params=SynthesisParams(nfe_step=6, seed=seed, speed=speed), chunk_index=chunk)
            for v, text, seed, speed, chunk in specs]


def test_a_batch_equals_its_items_sampled_alone(dense_model, mixed_items):
    sampler = Sampler(*dense_model, "cpu")
    batched = sampler.sample(mixed_items)
    alone = [sampler.sample([item])[0] for item in mixed_items]
    assert len({len(w) for w in alone}) == len(mixed_items)
    assert all(a.shape == b.shape for a, b in zip(batched, alone, strict=True))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(batched, alone, strict=True))
    print(f"worst batched-vs-alone wave difference: {worst:.3g}")
    assert worst <= BATCH_TOLERANCE
    assert min(float(np.abs(w).max()) for w in alone) > 100 * BATCH_TOLERANCE  # not silence


def test_a_batch_of_one_length_is_sampled_unmasked_and_equals_its_items_alone(dense_model, mixed_items,
                                                                              monkeypatch):
    """Equal durations need no padding, so no mask (and no masked attention) at all."""
    model, _ = dense_model
    items = [replace(mixed_items[0], params=replace(mixed_items[0].params, seed=seed)) for seed in (1, 2, 3)]
    masks = []
    forward = type(model.transformer).forward

    def recording(self, *args, mask=None, **kwargs):
        masks.append(mask)
        return forward(self, *args, mask=mask, **kwargs)

    sampler = Sampler(*dense_model, "cpu")
    alone = [sampler.sample([item])[0] for item in items]
    monkeypatch.setattr(type(model.transformer), "forward", recording)
    batched = sampler.sample(items)
    assert masks and all(mask is None for mask in masks)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(batched, alone, strict=True))
    print(f"worst batched-vs-alone wave difference, one length: {worst:.3g}")
    assert worst <= BATCH_TOLERANCE
    assert not np.array_equal(alone[0], alone[1])  # the seeds differ


def test_a_batch_equals_its_items_sampled_alone_in_the_mel(dense_model, mixed_items):
    """The same before the vocoder, whose small gain would hide a leak through the text embedding."""
    model, _ = dense_model
    Sampler(*dense_model, "cpu")  # masks the attention
    with torch.inference_mode():
        conds = [condition(model, item, "cpu") for item in mixed_items]
        noise = [item_noise(item, c.duration, model.num_channels) for item, c in zip(mixed_items, conds, strict=True)]
        batched = integrate(model, conds, noise, mixed_items[0].params)
        alone = [integrate(model, [c], [n], mixed_items[0].params)[0] for c, n in zip(conds, noise, strict=True)]
    worst = max(float((b[: len(a)] - a).abs().max()) for b, a in zip(batched, alone, strict=True))
    print(f"worst batched-vs-alone mel difference: {worst:.3g}")
    assert worst <= BATCH_TOLERANCE


def test_other_backbones_sample_one_item_at_a_time_as_upstream_does(dense_model, mixed_items, monkeypatch):
    """E2-TTS's UNetT does not mask its convolutions: its items are sampled alone, each as upstream would."""
    f5 = f5_model()
    dit, vocoder = dense_model
    unet = randomise(f5.CFM(
        transformer=f5.UNetT(dim=64, depth=2, heads=2, ff_mult=2, text_dim=32, conv_layers=1, mel_dim=100,
                             text_num_embeds=len(dit.vocab_char_map)),
        mel_spec_kwargs=MEL_SPEC, odeint_kwargs={"method": ODE_METHOD}, vocab_char_map=dit.vocab_char_map,
    ))
    items = [replace(item, params=replace(item.params, nfe_step=5)) for item in mixed_items[1:3]]
    batched = Sampler(unet, vocoder, "cpu").sample(items)
    for item, wave in zip(items, batched, strict=True):
        assert np.array_equal(wave, upstream_wave(unet, vocoder, item, monkeypatch))


def test_noise_depends_on_seed_and_chunk_only(references):
    ref = references["en"]

    def noise(seed: int, chunk: int, **other) -> torch.Tensor:
        item = WorkItem(ref_audio=ref.audio, ref_text=ref.text, text="x", params=SynthesisParams(seed=seed, **other),
                        chunk_index=chunk)
        return item_noise(item, 50, 100)

    assert torch.equal(noise(4, 1), noise(4, 1, speed=2.0, nfe_step=8))
    assert not torch.allclose(noise(4, 1), noise(5, 1))
    assert not torch.allclose(noise(4, 1), noise(4, 0))


def test_items_of_different_passes_are_refused(dense_model, references):
    ref = references["en"]
    items = [WorkItem(ref_audio=ref.audio, ref_text=ref.text, text="Hello there.", params=params)
             for params in (SynthesisParams(nfe_step=4), SynthesisParams(nfe_step=6))]
    assert batch_key(items[0]) != batch_key(items[1])
    assert batch_key(items[0]) == batch_key(WorkItem(ref_audio=ref.audio, ref_text="", text="",
                                                     params=SynthesisParams(nfe_step=4, seed=9, speed=2.0)))
    with pytest.raises(ValueError, match="cannot share a pass"):
        Sampler(*dense_model, "cpu").sample(items)


def test_target_rms_is_upstreams():
    from f5_tts.infer import utils_infer

    from f5worker.engine import sampler

    assert sampler.TARGET_RMS == utils_infer.target_rms
