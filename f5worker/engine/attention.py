"""Attention over a padded batch, the key-padding mask left for the attention kernel to broadcast.

Upstream's ``AttnProcessor`` (torch backend) masks a batch by expanding its ``(batch, frames)``
mask to ``(batch, heads, frames, frames)``. ``scaled_dot_product_attention`` turns a boolean mask
into an additive float one with ``zeros_like``, which gives an expanded view its full size: every
layer, at every step, allocates and fills ``batch x heads x frames^2`` floats (a batch of 16
15-second items under guidance: 32 x 16 x 1300^2 x 2 bytes, 1.7 GB per layer call). Given the mask
as ``(batch, 1, 1, frames)`` the kernel broadcasts it instead; the softmax sees the same logits, so
the result is the same (``tests/test_attention.py``). On CPU that attention call costs about what
an unmasked one does (BENCHMARKS.md section 4; the GPU figure is still to be measured there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from x_transformers.x_transformers import apply_rotary_pos_emb


class KeyPaddingAttention:
    """A DiT block's attention processor: upstream's own for a call without a mask (a lone item,
    whose path stays upstream's), and for a padded batch upstream's torch-backend computation with
    the mask broadcast (module docstring)."""

    def __init__(self, upstream) -> None:
        self.upstream = upstream  # f5_tts.model.modules.AttnProcessor

    def __call__(self, attn: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                 rope=None) -> torch.Tensor:
        if mask is None:
            return self.upstream(attn, x, mask=None, rope=rope)
        batch = x.shape[0]
        head_dim = attn.inner_dim // attn.heads
        query, key, value = (proj(x).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.q_norm is not None:
            query = attn.q_norm(query)
        if attn.k_norm is not None:
            key = attn.k_norm(key)
        if rope is not None:
            query, key = self.rotate(query, key, rope)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :])
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out.masked_fill(~mask.unsqueeze(-1), 0.0)

    def rotate(self, query: torch.Tensor, key: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's rotary embedding, on the first ``pe_attn_head`` heads or on all."""
        freqs, xpos_scale = rope
        q_scale, k_scale = (xpos_scale, xpos_scale**-1.0) if xpos_scale is not None else (1.0, 1.0)
        heads = self.upstream.pe_attn_head
        if heads is None:
            return apply_rotary_pos_emb(query, freqs, q_scale), apply_rotary_pos_emb(key, freqs, k_scale)
        query[:, :heads] = apply_rotary_pos_emb(query[:, :heads], freqs, q_scale)
        key[:, :heads] = apply_rotary_pos_emb(key[:, :heads], freqs, k_scale)
        return query, key


def mask_attention(transformer: torch.nn.Module) -> None:
    """Have the DiT's attention ignore padded frames whenever it is given a mask; a lone item is
    sampled without a mask, as upstream samples it. Upstream's flash-attention backend already
    masks a batch without a square mask (it unpads), so it keeps its processor."""
    for block in transformer.transformer_blocks:
        processor = block.attn.processor
        if isinstance(processor, KeyPaddingAttention):
            continue
        if processor.attn_backend == "torch":
            block.attn.processor = KeyPaddingAttention(processor)
        else:
            processor.attn_mask_enabled = True
