"""KeyPaddingAttention against upstream's AttnProcessor with its mask on: the same attention, with
the key-padding mask broadcast instead of expanded to (batch, heads, frames, frames)."""

from __future__ import annotations

import pytest
import torch
from x_transformers.x_transformers import RotaryEmbedding

from f5worker.engine import attention
from f5worker.engine.attention import KeyPaddingAttention, mask_attention
from f5worker.engine.upstream import f5_model

LENGTHS = (37, 20, 9)  # frames per item: the batch is padded to the first


def attention_case(qk_norm: str | None, pe_attn_head: int | None):
    modules = f5_model().modules
    torch.manual_seed(0)
    processor = modules.AttnProcessor(pe_attn_head=pe_attn_head, attn_mask_enabled=False)
    processor.attn_mask_enabled = True  # after construction, which warns of the memory this costs
    attn = modules.Attention(processor=processor, dim=32, heads=4, dim_head=8, qk_norm=qk_norm).eval()
    frames = max(LENGTHS)
    x = torch.randn(len(LENGTHS), frames, 32)
    mask = torch.arange(frames)[None] < torch.tensor(LENGTHS)[:, None]
    rope = RotaryEmbedding(8).forward_from_seq_len(frames)
    return attn, x, mask, rope


@pytest.mark.parametrize(("qk_norm", "pe_attn_head"), [(None, None), ("rms_norm", 2)])
def test_a_padded_batch_is_attended_as_upstream_attends_it(qk_norm, pe_attn_head):
    attn, x, mask, rope = attention_case(qk_norm, pe_attn_head)
    with torch.inference_mode():
        theirs = attn(x, mask=mask, rope=rope)
        ours = KeyPaddingAttention(attn.processor)(attn, x, mask=mask, rope=rope)
        unmasked = attn(x, mask=None, rope=rope)
    worst = float((ours - theirs).abs().max())
    print(f"worst difference from upstream's masked attention: {worst:.3g}")
    assert worst <= 1e-6
    assert not ours[~mask].any()  # padded frames zeroed, as upstream does
    assert float((unmasked - theirs)[mask].abs().max()) > 1e-2  # the mask matters in this case


def test_the_kernel_gets_the_mask_broadcast_not_squared(monkeypatch):
    attn, x, mask, rope = attention_case(None, None)
    shapes = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording(*args, attn_mask=None, **kwargs):
        shapes.append(tuple(attn_mask.shape))
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    with torch.inference_mode():
        KeyPaddingAttention(attn.processor)(attn, x, mask=mask, rope=rope)
    assert shapes == [(len(LENGTHS), 1, 1, max(LENGTHS))]


def test_without_a_mask_it_is_upstreams_processor_bit_for_bit():
    attn, x, _, rope = attention_case(None, None)
    with torch.inference_mode():
        assert torch.equal(KeyPaddingAttention(attn.processor)(attn, x, rope=rope), attn(x, rope=rope))


def test_masking_a_dit_twice_wraps_its_processors_once(tiny_model):
    transformer = tiny_model.model.transformer
    mask_attention(transformer)
    mask_attention(transformer)
    processors = [block.attn.processor for block in transformer.transformer_blocks]
    assert all(isinstance(p, KeyPaddingAttention) for p in processors)
    assert not any(isinstance(p.upstream, KeyPaddingAttention) for p in processors)
