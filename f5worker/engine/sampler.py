"""Our sampling loop: several work items (text chunks) in one batched pass of upstream's ``CFM``.

The maths are upstream's, item by item as ``utils_infer.infer_batch_process`` does them for one
chunk: the reference's RMS normalisation, text to characters/pinyin, the duration estimate,
the Euler ODE with sway sampling and classifier-free guidance (``CFM.sample``), cutting the
reference off the generated mel, vocoding. A lone item takes exactly upstream's path: given
the same initial noise its wave is bit-identical to ``infer_batch_process``'s (CPU, fp32).

In a batch each item's wave equals its wave sampled alone (``tests/test_sampler.py``: within
1e-4, in practice ~1e-7 on the CPU in fp32, where the batched matrix products round differently):

- noise: each item draws its own from a generator seeded by its seed and chunk index
  (``item_noise``), not one global draw for the batch as ``CFM.sample`` does;
- text: embedded per item and handed to the DiT through its text cache
  (``cache_text_embeddings``): its ConvNeXt blocks' GRN normalises over the whole padded
  sequence, and without ``text_mask_padding`` their convolutions run into the padding;
- attention: masked to each item's frames (``attention.mask_attention``, with the mask broadcast,
  not expanded to a square per head), which the published configs leave off
  (``attn_mask_enabled: False``): upstream samples one item at a time; a batch whose items
  all have one length needs no mask and gets none;
- the input's ConvPositionEmbedding masks padding itself when given the mask; the other
  layers work per position;
- the vocoder runs per item on its own trimmed mel.

Only the DiT backbone (every published F5-TTS) is batched; other backbones (E2-TTS's UNetT,
whose convolutions take no mask) sample items one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torchdiffeq import odeint

from f5worker.contract import SynthesisParams
from f5worker.engine.attention import mask_attention
from f5worker.engine.upstream import f5_model

TARGET_RMS = 0.1  # quieter references are brought up to this RMS, and their output back down
SHORT_TEXT_BYTES = 10  # upstream speaks a chunk of fewer UTF-8 bytes than this ...
SHORT_TEXT_SPEED = 0.3  # ... at this speed, whatever was asked
MAX_DURATION = 65536  # CFM.sample's cap on frames


@dataclass(frozen=True)
class WorkItem:
    ref_audio: torch.Tensor  # (1, n) float32 mono 24 kHz, as voices.prepare_audio makes it
    ref_text: str  # normalised as voices.normalise_ref_text does
    text: str  # one chunk (from TTSModel.plan)
    params: SynthesisParams
    chunk_index: int = 0  # the item's noise comes from its own generator seeded by (params.seed, chunk_index)
    attempt: int = 0  # a retake's (from 1) noise is seeded by (params.seed, chunk_index, attempt)


def batch_key(item: WorkItem) -> tuple:
    """Items with equal keys can share one forward pass: same steps, same guidance."""
    return (item.params.nfe_step, item.params.cfg_strength, item.params.sway_sampling_coef)


def item_noise(item: WorkItem, frames: int, channels: int) -> torch.Tensor:
    """The item's initial noise, ``(frames, channels)`` float32 on the CPU (the same on every
    device), from a generator seeded by ``(seed, chunk_index)`` through numpy's SeedSequence,
    so that neighbouring seeds and chunks get unrelated streams; a retake adds its attempt."""
    entropy = [item.params.seed, item.chunk_index, *([item.attempt] if item.attempt else [])]
    seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.randn(frames, channels, generator=torch.Generator().manual_seed(int(seed)))


@dataclass(frozen=True)
class Conditioning:
    """One item as ``CFM.sample`` takes it, computed as ``infer_batch_process`` does."""

    mel: torch.Tensor  # (frames, n_mels) the reference's mel, in the model's dtype
    tokens: torch.Tensor  # (n_tokens,) reference text + chunk as vocabulary indices
    ref_frames: int  # the reference's length in hops, cut off the generated mel
    duration: int  # frames to generate, reference included
    rms: torch.Tensor  # the reference's RMS before normalisation


def condition(model: torch.nn.Module, item: WorkItem, device: str) -> Conditioning:
    utils = f5_model().utils
    audio = item.ref_audio
    rms = torch.sqrt(torch.mean(torch.square(audio)))
    if rms < TARGET_RMS:
        audio = audio * TARGET_RMS / rms
    audio = audio.to(device)
    ref_text = item.ref_text + " " if len(item.ref_text[-1].encode("utf-8")) == 1 else item.ref_text
    text_bytes = len(item.text.encode("utf-8"))
    speed = SHORT_TEXT_SPEED if text_bytes < SHORT_TEXT_BYTES else item.params.speed
    chars = utils.convert_char_to_pinyin([ref_text + item.text])
    tokens = utils.list_str_to_idx(chars, model.vocab_char_map)[0].to(device)
    ref_frames = audio.shape[-1] // model.mel_spec.hop_length
    duration = ref_frames + int(ref_frames / len(ref_text.encode("utf-8")) * text_bytes / speed)
    dtype = next(model.parameters()).dtype
    mel = model.mel_spec(audio).permute(0, 2, 1)[0].to(dtype)
    # CFM.sample: at least the text or the reference (its mel frames) plus one frame
    duration = min(max(max(len(tokens), len(mel)) + 1, duration), MAX_DURATION)
    return Conditioning(mel=mel, tokens=tokens, ref_frames=ref_frames, duration=duration, rms=rms)


def cache_text_embeddings(transformer: torch.nn.Module, conds: Sequence[Conditioning], frames: int) -> None:
    """Embed each item's text alone, as the DiT does for a lone item, pad to ``frames``, and store
    the batch in the DiT's text cache (conditional and unconditional), which its forward pass then
    uses instead of embedding the padded batch."""
    for drop_text in (False, True):
        embedded = [
            F.pad(transformer.text_embed(c.tokens[None], seq_len=c.duration, drop_text=drop_text),
                  (0, 0, 0, frames - c.duration))
            for c in conds
        ]
        if drop_text:
            transformer.text_uncond = torch.cat(embedded)
        else:
            transformer.text_cond = torch.cat(embedded)


def integrate(model: torch.nn.Module, conds: Sequence[Conditioning], noise: Sequence[torch.Tensor],
              params: SynthesisParams) -> torch.Tensor:
    """``CFM.sample``'s flow for a batch, from the given initial noise (one ``(duration, n_mels)``
    tensor per item): the same step times (EPSS, sway), guidance and Euler steps, with padding
    masked (see the module docstring). Returns ``(batch, frames, n_mels)``, the reference frames
    put back as ``CFM.sample`` does."""
    transformer = model.transformer
    frames = max(c.duration for c in conds)
    device, dtype = conds[0].mel.device, conds[0].mel.dtype
    cond = torch.stack([F.pad(c.mel, (0, 0, 0, frames - len(c.mel))) for c in conds])
    ref_mask = torch.stack([torch.arange(frames, device=device) < len(c.mel) for c in conds]).unsqueeze(-1)
    step_cond = torch.where(ref_mask, cond, torch.zeros_like(cond))
    text = pad_sequence([c.tokens for c in conds], padding_value=-1, batch_first=True)
    batched = len(conds) > 1
    padded = any(c.duration < frames for c in conds)
    mask = torch.stack([torch.arange(frames, device=device) < c.duration for c in conds]) if padded else None

    def flow(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if params.cfg_strength < 1e-5:
            return transformer(x=x, cond=step_cond, text=text, time=t, mask=mask,
                               drop_audio_cond=False, drop_text=False, cache=True)
        pred, null_pred = torch.chunk(
            transformer(x=x, cond=step_cond, text=text, time=t, mask=mask, cfg_infer=True, cache=True), 2, dim=0)
        return pred + (pred - null_pred) * params.cfg_strength

    y0 = pad_sequence(list(noise), padding_value=0, batch_first=True)
    t = f5_model().utils.get_epss_timesteps(params.nfe_step, device=device, dtype=dtype)
    t = t + params.sway_sampling_coef * (torch.cos(torch.pi / 2 * t) - 1 + t)
    try:
        if batched:
            cache_text_embeddings(transformer, conds, frames)
        trajectory = odeint(flow, y0, t, **model.odeint_kwargs)
    finally:
        transformer.clear_cache()
    return torch.where(ref_mask, cond, trajectory[-1])


class Sampler:
    """Samples batches of work items on one loaded model and vocoder (not re-entrant: the
    DiT's text cache is per thread, so one thread samples at a time per model)."""

    def __init__(self, model: torch.nn.Module, vocoder: torch.nn.Module, device: str):
        self.model = model.eval()
        self.vocoder = vocoder
        self.device = device
        self.batches = isinstance(model.transformer, f5_model().DiT)
        if self.batches:
            mask_attention(model.transformer)

    def sample(self, items: Sequence[WorkItem]) -> list[np.ndarray]:
        """Each item's float32 wave at 24 kHz, the items sampled in one batched pass; they must
        share a ``batch_key``."""
        if not items:
            return []
        if len({batch_key(item) for item in items}) > 1:
            raise ValueError("items with different nfe_step, cfg_strength or sway_sampling_coef cannot share a pass")
        if len(items) > 1 and not self.batches:
            return [wave for item in items for wave in self.sample([item])]
        with torch.inference_mode():
            conds = [condition(self.model, item, self.device) for item in items]
            noise = [item_noise(item, c.duration, self.model.num_channels).to(self.device, c.mel.dtype)
                     for item, c in zip(items, conds, strict=True)]
            mels = integrate(self.model, conds, noise, items[0].params)
            return [self.vocode(mel[None, : c.duration], c) for mel, c in zip(mels, conds, strict=True)]

    def vocode(self, mel: torch.Tensor, cond: Conditioning) -> np.ndarray:
        """``infer_batch_process``'s ending: cut off the reference, vocode, undo the RMS gain."""
        generated = mel.to(torch.float32)[:, cond.ref_frames :, :].permute(0, 2, 1)
        wave = self.vocoder.decode(generated)
        if cond.rms < TARGET_RMS:
            wave = wave * cond.rms / TARGET_RMS
        return wave.squeeze().cpu().numpy()
